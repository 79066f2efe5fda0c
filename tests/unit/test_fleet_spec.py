"""The fleet spec: the shipped C-MAPSS spec loads and matches today's behaviour; each kind
of bad spec fails with one message naming the file, the key and what is wrong."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from prognos.core import fleet as core_fleet
from prognos.core.errors import PrognosError
from prognos.core.settings import PROJECT_ROOT, load_settings
from prognos.domain.errors import FleetSpecError
from prognos.domain.fleet import FleetSpec, load_fleet

pytestmark = pytest.mark.unit

CMAPSS = PROJECT_ROOT / "fleets" / "cmapss.toml"


def test_the_shipped_spec_loads():
    spec = load_fleet(CMAPSS)
    assert spec.name == "cmapss"
    assert spec.setting_names == ("setting_1", "setting_2", "setting_3")
    assert spec.sensor_names == tuple(f"sensor_{i}" for i in range(1, 22))
    assert all(r.required and r.unit and r.description for r in spec.readings)
    assert spec.ordering.by == "cycle" and spec.ordering.rul_unit == "cycles"
    assert spec.machines.pattern.fullmatch("FD001-test-0007-c02")


def test_the_shipped_spec_says_what_the_code_does_today():
    from prognos.core.data import SENSOR_COLUMNS, SETTING_COLUMNS
    from prognos.core.features import FeatureConfig

    spec = load_fleet(CMAPSS)
    features = FeatureConfig()
    settings = load_settings()
    assert (spec.setting_names, spec.sensor_names) == (SETTING_COLUMNS, SENSOR_COLUMNS)
    assert spec.features.rolling_windows == features.windows
    assert spec.features.sensors == features.sensors
    assert (spec.labels.rul_cap, spec.labels.horizon) == (features.rul_cap, features.horizon)
    assert spec.labels.rul_cap == settings.gold_rul_cap
    assert (spec.alert.red_rul, spec.alert.amber_rul) == (
        settings.alert_red_rul,
        settings.alert_amber_rul,
    )


def test_the_shipped_ranges_are_the_ones_learned_from_the_training_files():
    from prognos.core.quality import learned_ranges

    assert load_fleet(CMAPSS).ranges == learned_ranges(0.1)


def test_the_default_fleet_is_the_setting_and_its_errors_are_prognos_errors(tmp_path):
    assert core_fleet.default_fleet(load_settings()).name == "cmapss"
    missing = load_settings(fleet_spec=tmp_path / "nope.toml")
    with pytest.raises(PrognosError, match=r"nope\.toml: no such fleet spec file"):
        core_fleet.default_fleet(missing)
    with pytest.raises(FleetSpecError):  # the domain's class catches the core's error too
        core_fleet.load_fleet(tmp_path / "nope.toml")


# ------------------------------------------------------------------ bad specs


def cmapss_data() -> dict:
    return tomllib.loads(CMAPSS.read_text())


def write_spec(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(_toml(data))
    return path


def _toml(data: dict) -> str:
    """A small TOML writer for the spec's shapes (tables, arrays of tables, scalars)."""
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append(f"[{key}]\n" + "".join(f"{k} = {_value(v)}\n" for k, v in value.items()))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                body = "".join(f"{k} = {_value(v)}\n" for k, v in item.items())
                tables.append(f"[[{key}]]\n{body}")
        else:
            lines.append(f"{key} = {_value(value)}")
    return "\n".join(lines) + "\n\n" + "\n".join(tables)


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return repr(value)


def test_the_writer_round_trips_the_shipped_spec(tmp_path):
    assert load_fleet(write_spec(tmp_path, cmapss_data())) == load_fleet(CMAPSS)


def _unknown_key(data):
    data["sensors"][3]["colour"] = "red"


def _unknown_top_key(data):
    data["owner"] = "ops"


def _wrong_type(data):
    data["features"]["window"] = "thirty"


def _min_above_max(data):
    data["sensors"][3]["range"] = [5.0, 1.0]


def _duplicate_sensor(data):
    data["sensors"][5]["name"] = "sensor_2"


def _setting_named_like_a_sensor(data):
    data["sensors"][0]["name"] = "setting_2"


def _bad_regex(data):
    data["machines"]["id_pattern"] = "[A-Z"


def _missing_required(data):
    del data["sensors"][2]["unit"]


def _missing_table(data):
    del data["alert"]


def _red_above_amber(data):
    data["alert"]["red_rul"] = 40


def _undeclared_feature_sensor(data):
    data["features"]["sensors"] = ["sensor_2", "sensor_99"]


def _time_order_without_cadence(data):
    data["ordering"] = {"by": "event_time", "rul_unit": "hours"}


BAD_SPECS = {
    "unknown key": (_unknown_key, "sensors[3] (sensor_4).colour: unknown key"),
    "unknown top-level key": (_unknown_top_key, "owner: unknown key"),
    "wrong type": (_wrong_type, "features.window: Input should be a valid integer"),
    "min above max": (_min_above_max, "sensors[3] (sensor_4).range: min 5.0 > max 1.0"),
    "duplicate sensor": (_duplicate_sensor, "sensors: duplicate name 'sensor_2' at [5]"),
    "name taken by a setting": (
        _setting_named_like_a_sensor,
        "sensors: duplicate name 'setting_2' at [0] (already in settings)",
    ),
    "bad regex": (_bad_regex, "machines.id_pattern: not a valid regular expression"),
    "missing key": (_missing_required, "sensors[2] (sensor_3).unit: required key missing"),
    "missing table": (_missing_table, "alert: required key missing"),
    "red above amber": (_red_above_amber, "alert: red_rul 40.0 > amber_rul 30.0"),
    "undeclared feature sensor": (
        _undeclared_feature_sensor,
        "features: sensors lists undeclared sensors ['sensor_99']",
    ),
    "time order without cadence": (
        _time_order_without_cadence,
        "ordering: cadence_s is required when ordered by event_time",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_a_bad_spec_fails_naming_the_file_and_the_key(tmp_path, case):
    breaks, expected = BAD_SPECS[case]
    data = cmapss_data()
    breaks(data)
    path = write_spec(tmp_path, data)
    with pytest.raises(FleetSpecError) as error:
        load_fleet(path)
    message = str(error.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message
    assert "\n" not in message


def test_every_problem_is_reported_at_once(tmp_path):
    data = cmapss_data()
    _unknown_key(data)
    _bad_regex(data)
    _missing_required(data)
    with pytest.raises(FleetSpecError) as error:
        load_fleet(write_spec(tmp_path, data))
    problems = str(error.value).split("; ")
    assert len(problems) == 3, problems
    assert "colour" in problems[2] and "id_pattern" in problems[0] and "unit" in problems[1]


def test_a_file_that_is_not_toml_is_named(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\n[machines\n')
    with pytest.raises(FleetSpecError, match=r"broken.toml: not valid TOML \(.*line 2"):
        load_fleet(path)


def test_a_minimal_spec_of_another_fleet_loads(tmp_path):
    data = {
        "name": "pumps",
        "machines": {"id_pattern": "pump-[0-9]{3}"},
        "ordering": {"by": "event_time", "cadence_s": 600.0, "rul_unit": "hours"},
        "features": {
            "window": 24,
            "rolling_windows": [6],
            "statistics": ["mean"],
            "normalisation": "global",
            "sensors": ["vibration"],
        },
        "labels": {"rul_cap": 500.0, "horizon": 48.0},
        "alert": {"red_rul": 24.0, "amber_rul": 72.0},
        "sensors": [
            {"name": "vibration", "unit": "mm/s", "range": [0.0, 50.0]},
            {"name": "temperature", "unit": "degC", "range": [-20.0, 120.0], "required": False},
        ],
    }
    spec = load_fleet(write_spec(tmp_path, data))
    assert isinstance(spec, FleetSpec)
    assert spec.settings == () and spec.labels.failures_topic == "machine-failures"
    assert [r.required for r in spec.sensors] == [True, False]


def test_per_condition_normalisation_needs_settings(tmp_path):
    data = cmapss_data()
    del data["settings"]
    data["features"]["sensors"] = ["sensor_2"]
    with pytest.raises(FleetSpecError, match="normalisation 'per_condition' needs operating"):
        load_fleet(write_spec(tmp_path, data))
