import pytest

from prognos.core.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit


def test_defaults_live_under_the_state_dir(tmp_path):
    settings = load_settings(state_dir=tmp_path)
    assert settings.lake == tmp_path / "lake"
    assert settings.checkpoints == tmp_path / "checkpoints"
    assert settings.registry == tmp_path / "models"


def test_standard_variables_override(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker.example:9999")
    monkeypatch.setenv("SPARK_MASTER", "spark://master:7077")
    settings = load_settings()
    assert settings.kafka_bootstrap_servers == "broker.example:9999"
    assert settings.spark_master == "spark://master:7077"
    assert settings.kafka_is_external


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PROGNOS_API_PORT", "not-a-port"),
        ("PROGNOS_API_PORT", "70000"),
        ("KAFKA_BOOTSTRAP_SERVERS", "no-port"),
        ("SPARK_MASTER", "mesos://x"),
    ],
)
def test_invalid_value_names_setting_and_value(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert value in str(error.value)
    assert "invalid setting" in str(error.value)


def test_only_the_standard_variable_implies_an_external_broker(monkeypatch):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("PROGNOS_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    assert not load_settings().kafka_is_external
    monkeypatch.setenv("PROGNOS_KAFKA_EXTERNAL", "true")
    assert load_settings().kafka_is_external
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker.example:9092")
    monkeypatch.setenv("PROGNOS_KAFKA_EXTERNAL", "false")
    assert not load_settings().kafka_is_external  # the explicit setting wins
