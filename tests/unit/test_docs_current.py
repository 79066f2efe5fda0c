"""The generated reference docs match the code they are generated from."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
STALE = "{path} is not current: regenerate it with `make docs` (python scripts/gen_docs.py)"


def gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_and_metrics_reference_is_current():
    docs = gen_docs()
    committed = docs.OPERATIONS.read_text()
    assert docs.operations_markdown(committed) == committed, STALE.format(path="docs/operations.md")


def test_api_reference_is_current():
    docs = gen_docs()
    assert docs.api_markdown() == docs.API.read_text(), STALE.format(path="docs/api.md")


def test_every_setting_is_in_the_reference():
    from prognos.core.settings import Settings

    reference = (ROOT / "docs" / "operations.md").read_text()
    missing = [name for name in Settings.model_fields if f"| `{name}` |" not in reference]
    assert not missing, STALE.format(path="docs/operations.md") + f" (missing: {missing})"


def test_a_bench_without_results_says_how_to_measure(tmp_path):
    text = gen_docs().benchmarks_markdown(tmp_path)
    assert "Not measured yet: run `python bench/speed.py`." in text


def test_a_bench_result_puts_each_figure_beside_its_reference(tmp_path):
    (tmp_path / "replay.json").write_text(
        '{"name": "replay", "quick": false, "cores": 2, "machine": "m", "elapsed_s": 1,'
        ' "cpu_probe_s": {"start": 0.02, "end": 0.03},'
        ' "figures": {"replay_events_per_s": 9000},'
        ' "reference": {"bare_kafka_python_events_per_s": 10000},'
        ' "checks": [{"name": "ratio", "value": 0.9, "op": ">=", "target": 0.8, "pass": true}]}'
    )
    text = gen_docs().benchmarks_markdown(tmp_path)
    assert "| replay_events_per_s | 9000 | 10000 | bare_kafka_python_events_per_s |" in text
    assert "| ratio | 0.9 | >= 0.8 | yes |" in text
    assert "2 cores" in text


def test_generated_sections_need_their_markers():
    with pytest.raises(SystemExit, match="markers of the 'settings' section are missing"):
        gen_docs().replace_section("no markers here", "settings", "body")
