"""`nms-cds serve` refuses auth=off on a public interface and JWT mode without trusted clients."""

from __future__ import annotations

import pytest

from cds_service import cli
from cds_service.serve.front import nginx_binary
from tests.helpers import security

# the shared fixtures: a JWT-mode app factory, its app and client, recorded outbound calls, debug logs
_debug_logs, app, build, client, outbound = (security._debug_logs, security.app, security.build, security.client,
                                             security.outbound)


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    started: list[str] = []
    import gunicorn.app.base

    monkeypatch.setattr(gunicorn.app.base.BaseApplication, "run", lambda self: started.append("run"))
    for name in ("NMS_CDS_AUTH_OFF_FORCE", "NMS_CDS_TRUSTED_CLIENTS", "NMS_CDS_ENVIRONMENT", "NMS_CDS_CORS_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    return started


def test_serve_refuses_auth_off_on_a_public_interface(monkeypatch: pytest.MonkeyPatch, no_server: list[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NMS_CDS_AUTH", "off")
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2
    assert no_server == []
    assert "NMS_CDS_AUTH=off" in capsys.readouterr().err


def test_serve_refuses_jwt_mode_without_trusted_clients(monkeypatch: pytest.MonkeyPatch, no_server: list[str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NMS_CDS_AUTH", "jwt")
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2
    assert no_server == []
    assert "NMS_CDS_TRUSTED_CLIENTS" in capsys.readouterr().err


def test_serve_with_auth_off_on_loopback_is_allowed(monkeypatch: pytest.MonkeyPatch, no_server: list[str]) -> None:
    monkeypatch.setenv("NMS_CDS_AUTH", "off")
    if nginx_binary() is None:  # not about the front: where nginx is not installed, serve without one
        monkeypatch.setenv("NMS_CDS_FRONT", "none")
    assert cli.main(["serve", "--host", "127.0.0.1"]) == 0
    assert no_server == ["run"]
