"""`nms-cds check-config` with a site file: each override with its file and key; unsafe ones refused (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cds_service import cli


def test_check_config_lists_each_override_with_where_it_came_from(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[thresholds.ck]\nuln_multiple = 5.0\n\n[[code_map]]\nsystem = "http://loinc.org"\n'
                    'code = "32673-6"\ntext = "Kreatinkinase"\nconcept = "creatine-kinase"\nunit = "U/L"\n',
                    encoding="utf-8")
    monkeypatch.setenv("NMS_CDS_AUTH", "off")
    monkeypatch.setenv("NMS_CDS_SITE_FILE", str(site))
    assert cli.main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert f"({site}); overrides: 2" in out
    assert f"  {site}: thresholds.ck.uln_multiple  ck.uln_multiple = 5 (default 4; bounds 2-10)" in out
    assert (f"  {site}: code_map[0]  http://loinc.org|32673-6 where the text is 'Kreatinkinase' read as "
            "creatine-kinase, a value without a unit in U/L") in out
    assert "problems: 0" in out
    assert cli.main(["check-config", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["knowledge"]["version"].split("+")[1].startswith("site.")
    assert [o["source"] for o in report["knowledge"]["overrides"]] == [
        f"{site}: thresholds.ck.uln_multiple", f"{site}: code_map[0]"]


def test_check_config_without_a_site_file_names_the_defaults(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NMS_CDS_AUTH", "off")
    monkeypatch.delenv("NMS_CDS_SITE_FILE", raising=False)
    assert cli.main(["check-config"]) == 0
    assert "+default (packaged defaults, no NMS_CDS_SITE_FILE); overrides: 0" in capsys.readouterr().out


def test_check_config_refuses_unsafe_overrides_one_line_each(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[thresholds.ck]\nuln_multiple = 12\n\n[[code_map]]\nsystem = "urn:x"\ncode = "1"\n'
                    'concept = "troponin"\n', encoding="utf-8")
    monkeypatch.setenv("NMS_CDS_AUTH", "off")
    monkeypatch.setenv("NMS_CDS_SITE_FILE", str(site))
    assert cli.main(["check-config"]) == 2
    out = capsys.readouterr().out
    assert "problems: 2\n" in out
    assert f"  {site}: thresholds.ck.uln_multiple: 12 is outside the documented safe bounds 2-10" in out
    assert f"  {site}: code_map[0].concept: unknown concept 'troponin'" in out
    monkeypatch.setenv("NMS_CDS_SITE_FILE", str(tmp_path / "missing.toml"))
    assert cli.main(["check-config"]) == 2
    assert f"NMS_CDS_SITE_FILE={tmp_path / 'missing.toml'}: no such file" in capsys.readouterr().out
