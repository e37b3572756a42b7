"""The unit conversions of ``clinical/data/observations*.tsv``: every row gives the numbers the formulas in ``x``
gave before the table stated them as ``unit: scale[: offset]`` (pinned below, computed once with the former
``ast``-based evaluator), so every converted reading stays the same."""

from __future__ import annotations

import pytest

from cds_service.clinical.valuesets_load import conversions, rows

# (file, LOINC code) -> {unit: (scale, offset)} as the former formulas gave them, e.g. [degF] "(x-32)*5/9".
PINNED: dict[tuple[str, str], dict[str, tuple[float, float]]] = {
    ('observations.tsv', '8310-5'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '8331-1'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '8332-9'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '8328-7'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '8333-7'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '8334-5'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '60836-4'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '60834-9'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '60955-2'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '61009-7'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '76010-8'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '8329-5'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '8330-3'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '60835-6'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '60838-0'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '75539-7'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '75987-8'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '76011-6'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '76278-1'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '8309-7'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '91371-5'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '98657-0'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '98663-8'): {'Cel': (1.0, 0.0), '[degF]': (0.5555555555555571, -17.77777777777778)},
    ('observations.tsv', '8867-4'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '8891-4'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '68999-2'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '8889-8'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '8890-6'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '8892-2'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '8893-0'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '40443-4'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '55425-3'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '69000-8'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '60978-4'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '73795-7'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '73799-9'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '76476-1'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '76477-9'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '11328-2'): {'/min': (1.0, 0.0), '{beats}/min': (1.0, 0.0)},
    ('observations.tsv', '8886-4'): {},
    ('observations.tsv', '9279-1'): {'/min': (1.0, 0.0), '{breaths}/min': (1.0, 0.0)},
    ('observations.tsv', '19840-8'): {'/min': (1.0, 0.0), '{breaths}/min': (1.0, 0.0)},
    ('observations.tsv', '33438-3'): {'/min': (1.0, 0.0), '{breaths}/min': (1.0, 0.0)},
    ('observations.tsv', '76170-0'): {'/min': (1.0, 0.0), '{breaths}/min': (1.0, 0.0)},
    ('observations.tsv', '76172-6'): {'/min': (1.0, 0.0), '{breaths}/min': (1.0, 0.0)},
    ('observations.tsv', '76171-8'): {'/min': (1.0, 0.0), '{breaths}/min': (1.0, 0.0)},
    ('observations.tsv', '76270-8'): {'/min': (1.0, 0.0), '{breaths}/min': (1.0, 0.0)},
    ('observations.tsv', '11291-2'): {'/min': (1.0, 0.0), '{breaths}/min': (1.0, 0.0)},
    ('observations.tsv', '85354-9'): {'mm[Hg]': (1.0, 0.0), 'kPa': (7.50062, 0.0)},
    ('observations.tsv', '35094-2'): {'mm[Hg]': (1.0, 0.0), 'kPa': (7.50062, 0.0)},
    ('observations.tsv', '55284-4'): {'mm[Hg]': (1.0, 0.0), 'kPa': (7.50062, 0.0)},
    ('observations.tsv', '8480-6'): {'mm[Hg]': (1.0, 0.0), 'kPa': (7.50062, 0.0)},
    ('observations.tsv', '8459-0'): {'mm[Hg]': (1.0, 0.0), 'kPa': (7.50062, 0.0)},
    ('observations.tsv', '76534-7'): {'mm[Hg]': (1.0, 0.0), 'kPa': (7.50062, 0.0)},
    ('observations.tsv', '8462-4'): {'mm[Hg]': (1.0, 0.0), 'kPa': (7.50062, 0.0)},
    ('observations.tsv', '8478-0'): {'mm[Hg]': (1.0, 0.0), 'kPa': (7.50062, 0.0)},
    ('observations.tsv', '2708-6'): {'%': (1.0, 0.0)},
    ('observations.tsv', '59408-5'): {'%': (1.0, 0.0)},
    ('observations.tsv', '85353-1'): {},
    ('observations.tsv', '2157-6'): {'U/L': (1.0, 0.0), '[IU]/L': (1.0, 0.0), 'ukat/L': (60.0, 0.0)},
    ('observations.tsv', '50756-6'): {'ug/L': (1.0, 0.0), 'ng/mL': (1.0, 0.0)},
    ('observations.tsv', '2498-4'): {
        'umol/L': (1.0, 0.0),
        'ug/dL': (0.17906706061420002, 0.0),
        'ug/L': (0.017906706061420002, 0.0),
        'mg/L': (17.906706061420003, 0.0),
    },
    ('observations.tsv', '14798-3'): {
        'umol/L': (1.0, 0.0),
        'ug/dL': (0.17906706061420002, 0.0),
        'ug/L': (0.017906706061420002, 0.0),
        'mg/L': (17.906706061420003, 0.0),
    },
    ('observations.tsv', '2500-7'): {
        'umol/L': (1.0, 0.0),
        'ug/dL': (0.17906706061420002, 0.0),
        'ug/L': (0.017906706061420002, 0.0),
        'mg/L': (17.906706061420003, 0.0),
    },
    ('observations.tsv', '2502-3'): {'%': (1.0, 0.0)},
    ('observations.tsv', '2276-4'): {'ug/L': (1.0, 0.0), 'ng/mL': (1.0, 0.0)},
    ('observations.tsv', '6690-2'): {
        '10*9/L': (1.0, 0.0),
        '10*3/uL': (1.0, 0.0),
        '10*3/mm3': (1.0, 0.0),
        '/nL': (1.0, 0.0),
        '/uL': (0.001, 0.0),
        '/mm3': (0.001, 0.0),
    },
    ('observations.tsv', '26464-8'): {
        '10*9/L': (1.0, 0.0),
        '10*3/uL': (1.0, 0.0),
        '10*3/mm3': (1.0, 0.0),
        '/nL': (1.0, 0.0),
        '/uL': (0.001, 0.0),
        '/mm3': (0.001, 0.0),
    },
    ('observations.tsv', '804-5'): {
        '10*9/L': (1.0, 0.0),
        '10*3/uL': (1.0, 0.0),
        '10*3/mm3': (1.0, 0.0),
        '/nL': (1.0, 0.0),
        '/uL': (0.001, 0.0),
        '/mm3': (0.001, 0.0),
    },
    ('observations.tsv', '33256-9'): {
        '10*9/L': (1.0, 0.0),
        '10*3/uL': (1.0, 0.0),
        '10*3/mm3': (1.0, 0.0),
        '/nL': (1.0, 0.0),
        '/uL': (0.001, 0.0),
        '/mm3': (0.001, 0.0),
    },
    ('observations.tsv', '1988-5'): {'mg/L': (1.0, 0.0), 'mg/dL': (10.0, 0.0), 'ug/mL': (1.0, 0.0)},
    ('observations.tsv', '30522-7'): {'mg/L': (1.0, 0.0), 'mg/dL': (10.0, 0.0), 'ug/mL': (1.0, 0.0)},
    ('observations.tsv', '1751-7'): {'g/L': (1.0, 0.0), 'g/dL': (10.0, 0.0), 'mg/dL': (0.01, 0.0)},
    ('observations.tsv', '2862-1'): {'g/L': (1.0, 0.0), 'g/dL': (10.0, 0.0), 'mg/dL': (0.01, 0.0)},
    ('observations.tsv', '61151-7'): {'g/L': (1.0, 0.0), 'g/dL': (10.0, 0.0), 'mg/dL': (0.01, 0.0)},
    ('observations.tsv', '3255-7'): {'g/L': (1.0, 0.0), 'mg/dL': (0.01, 0.0)},
    ('observations.tsv', '4537-7'): {'mm/h': (1.0, 0.0)},
    ('observations.tsv', '30341-2'): {'mm/h': (1.0, 0.0)},
    ('observations.tsv', '26881-3'): {'pg/mL': (1.0, 0.0), 'ng/L': (1.0, 0.0)},
    ('observations.tsv', '2639-3'): {'ug/L': (1.0, 0.0), 'ng/mL': (1.0, 0.0)},
    ('observations.tsv', '2640-1'): {},
    ('observations.tsv', '2823-3'): {'mmol/L': (1.0, 0.0), 'meq/L': (1.0, 0.0)},
    ('observations.tsv', '6298-4'): {'mmol/L': (1.0, 0.0), 'meq/L': (1.0, 0.0)},
    ('observations.tsv', '2160-0'): {'umol/L': (1.0, 0.0), 'mg/dL': (88.4, 0.0), 'mmol/L': (1000.0, 0.0)},
    ('observations.tsv', '14682-9'): {'umol/L': (1.0, 0.0), 'mg/dL': (88.4, 0.0), 'mmol/L': (1000.0, 0.0)},
    ('observations.tsv', '38483-4'): {'umol/L': (1.0, 0.0), 'mg/dL': (88.4, 0.0), 'mmol/L': (1000.0, 0.0)},
    ('observations.tsv', '77140-2'): {'umol/L': (1.0, 0.0), 'mg/dL': (88.4, 0.0), 'mmol/L': (1000.0, 0.0)},
    ('observations.tsv', '2951-2'): {'mmol/L': (1.0, 0.0), 'meq/L': (1.0, 0.0)},
    ('observations.tsv', '3094-0'): {'mg/dL': (1.0, 0.0), 'mmol/L': (2.801, 0.0)},
    ('observations.tsv', '1920-8'): {'U/L': (1.0, 0.0), '[IU]/L': (1.0, 0.0), 'ukat/L': (60.0, 0.0)},
    ('observations.tsv', '1742-6'): {'U/L': (1.0, 0.0), '[IU]/L': (1.0, 0.0), 'ukat/L': (60.0, 0.0)},
    ('observations.tsv', '2532-0'): {'U/L': (1.0, 0.0), '[IU]/L': (1.0, 0.0), 'ukat/L': (60.0, 0.0)},
    ('observations.tsv', '14804-9'): {'U/L': (1.0, 0.0), '[IU]/L': (1.0, 0.0), 'ukat/L': (60.0, 0.0)},
    ('observations.tsv', '33959-8'): {'ng/mL': (1.0, 0.0), 'ug/L': (1.0, 0.0)},
    ('observations-extra.tsv', '71426-1'): {'mg/L': (1.0, 0.0), 'mg/dL': (10.0, 0.0), 'ug/mL': (1.0, 0.0)},
    ('observations-extra.tsv', '48421-2'): {'mg/L': (1.0, 0.0), 'mg/dL': (10.0, 0.0), 'ug/mL': (1.0, 0.0)},
    ('observations-extra.tsv', '59826-8'): {'umol/L': (1.0, 0.0), 'mg/dL': (88.4, 0.0), 'mmol/L': (1000.0, 0.0)},
    ('observations-extra.tsv', '21232-4'): {'umol/L': (1.0, 0.0), 'mg/dL': (88.4, 0.0), 'mmol/L': (1000.0, 0.0)},
    ('observations-extra.tsv', '101475-2'): {'umol/L': (1.0, 0.0), 'mg/dL': (88.4, 0.0), 'mmol/L': (1000.0, 0.0)},
    ('observations-extra.tsv', '49498-9'): {
        '10*9/L': (1.0, 0.0),
        '10*3/uL': (1.0, 0.0),
        '10*3/mm3': (1.0, 0.0),
        '/nL': (1.0, 0.0),
        '/uL': (0.001, 0.0),
        '/mm3': (0.001, 0.0),
    },
    ('observations-extra.tsv', '12227-5'): {
        '10*9/L': (1.0, 0.0),
        '10*3/uL': (1.0, 0.0),
        '10*3/mm3': (1.0, 0.0),
        '/nL': (1.0, 0.0),
        '/uL': (0.001, 0.0),
        '/mm3': (0.001, 0.0),
    },
    ('observations-extra.tsv', '32713-0'): {'mmol/L': (1.0, 0.0), 'meq/L': (1.0, 0.0)},
    ('observations-extra.tsv', '39789-3'): {'mmol/L': (1.0, 0.0), 'meq/L': (1.0, 0.0)},
    ('observations-extra.tsv', '41656-0'): {'mmol/L': (1.0, 0.0), 'meq/L': (1.0, 0.0)},
    ('observations-extra.tsv', '77142-8'): {'mmol/L': (1.0, 0.0), 'meq/L': (1.0, 0.0)},
    ('observations-extra.tsv', '12812-4'): {'mmol/L': (1.0, 0.0), 'meq/L': (1.0, 0.0)},
    ('observations-extra.tsv', '12813-2'): {'mmol/L': (1.0, 0.0), 'meq/L': (1.0, 0.0)},
    ('observations-extra.tsv', '39790-1'): {'mmol/L': (1.0, 0.0), 'meq/L': (1.0, 0.0)},
    ('observations-extra.tsv', '75940-7'): {'mg/dL': (0.2557675584428871, 0.0), 'mg/L': (0.02557675584428871, 0.0)},
}
# The one number the table now states more exactly: the former evaluator took 5/9 as f(1) - f(0) of (x-32)*5/9,
# 0.5555555555555571 (cancellation); the table says 5/9 (0.5555555555555556). Readings convert the same (below).
RESTATED = {"[degF]"}


def _table() -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    out = {}
    for name in ("observations.tsv", "observations-extra.tsv"):
        for row in rows(name):
            if name == "observations-extra.tsv" and row["canonical_unit"] == "-":
                continue
            out[(name, row["code"])] = {unit: (c.scale, c.offset)
                                        for unit, c in conversions(row["accepted_units"]).items()}
    return out


def test_every_row_gives_the_numbers_its_formula_gave() -> None:
    table = _table()
    assert table.keys() == PINNED.keys()
    for key, found in table.items():
        assert found.keys() == PINNED[key].keys(), key
        for unit, (scale, offset) in found.items():
            old_scale, old_offset = PINNED[key][unit]
            assert offset == old_offset, (key, unit)
            if unit in RESTATED:
                assert scale == pytest.approx(old_scale, rel=1e-14, abs=0), (key, unit)
            else:
                assert scale == old_scale, (key, unit)


def test_restated_conversions_give_the_same_readings() -> None:
    """Every [degF] reading from -100.00 to 250.00 in steps of 0.01 converts to the same (rounded) Celsius."""
    [conversion] = {c["[degF]"] for c in (conversions(r["accepted_units"]) for r in rows("observations.tsv"))
                    if "[degF]" in c}
    old_scale, old_offset = PINNED[("observations.tsv", "8310-5")]["[degF]"]
    for hundredths in range(-10_000, 25_001):
        value = hundredths / 100
        assert conversion.apply(value) == round(old_scale * value + old_offset, 3), value
    assert conversion.apply(100.4) == 38.0


@pytest.mark.parametrize("spec", ["Cel: 1: 2: 3", "Cel: x", "Cel: (x-32)*5/9", "Cel: 1/", "Cel: 5/9/1", "Cel: inf"])
def test_a_malformed_conversion_is_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        conversions(spec)
