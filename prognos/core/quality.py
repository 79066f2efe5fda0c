"""Event quality rules: a Great Expectations suite defined in code, applied per row.

`flatten_payloads` turns raw Kafka values (JSON text) into one row per event with the
raw field values (type checks) and numeric copies (range checks). `validate_events`
runs the suite with GE on a pandas frame and returns, per row, EVERY rule it failed,
plus one summary row per rule. Physical sensor ranges are learned from the C-MAPSS
training data (all subsets) widened by a margin.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from prognos.core.events import (
    EVENT_TIME_MAX,
    EVENT_TIME_MIN,
    MACHINE_ID_PATTERN,
    MAX_CYCLE,
    SCHEMA_VERSION,
)

SETTING_FIELDS = tuple(f"setting_{i}" for i in range(1, 4))
SENSOR_FIELDS = tuple(f"sensor_{i}" for i in range(1, 22))
NUMERIC_FIELDS = (*SETTING_FIELDS, *SENSOR_FIELDS)
KEY_FIELDS = ("machine_id", "cycle")
REQUIRED_FIELDS = ("machine_id", "cycle", "event_time", "schema_version", *NUMERIC_FIELDS)
SCHEMA_VERSIONS = (SCHEMA_VERSION,)
ROW_ID = "_row_id"
PARSE_ERROR = "_parse_error"
EVENT_EPOCH = "_event_time_epoch"
EVENT_TIME_BAD = "_event_time_unparseable"
MACHINE_ID_BAD = "_machine_id_malformed"

Ranges = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Rule:
    """One named expectation; `name` is what quarantine rows and results record."""

    name: str
    expectation: object


@dataclass(frozen=True)
class ValidationOutcome:
    failed_rules: list[list[str]]  # per input row, in input order
    summary: pd.DataFrame  # rule, expectation, passed, element_count, unexpected_count


@functools.cache
def learned_ranges(margin: float = 0.1) -> Ranges:
    """Per setting/sensor (min, max) over all C-MAPSS training sets, widened by
    `margin` x span on each side (at least 1e-3 for constant signals)."""
    from prognos.core.data import SUBSETS, load_cmapss

    frames = [load_cmapss(subset, "train") for subset in SUBSETS]
    data = pd.concat([frame[list(NUMERIC_FIELDS)] for frame in frames], ignore_index=True)
    ranges = {}
    for name in NUMERIC_FIELDS:
        low, high = float(data[name].min()), float(data[name].max())
        pad = max((high - low) * margin, abs(high) * 1e-3, 1e-3)
        ranges[name] = (round(low - pad, 6), round(high + pad, 6))
    return ranges


# ------------------------------------------------------------------ flattening


def flatten_payloads(values: pd.Series) -> pd.DataFrame:
    """One row per payload: raw fields (objects), numeric copies, and a parse error."""
    records = [_flatten_one(value) for value in values]
    # object dtype keeps each raw value as sent (an int stays int, a string stays str)
    frame = pd.DataFrame(
        {name: pd.Series([r[name] for r in records], dtype=object) for name in _flat_columns()}
    )
    frame[ROW_ID] = np.arange(len(frame), dtype=np.int64)
    for name in ("cycle", *NUMERIC_FIELDS):
        frame[f"{name}__num"] = [_as_number(value) for value in frame[name]]
    frame[MACHINE_ID_BAD] = pd.Series(
        [
            "does not match " + MACHINE_ID_PATTERN.pattern
            if isinstance(value, str) and not MACHINE_ID_PATTERN.fullmatch(value)
            else None
            for value in frame["machine_id"]
        ],
        dtype=object,
    )
    for name, (expected, check) in TYPE_CHECKS.items():
        frame[f"{name}{TYPE_FAULT}"] = pd.Series(
            [None if v is None or check(v) else f"not {expected}" for v in frame[name]],
            dtype=object,
        )
    frame[EVENT_EPOCH] = [_as_epoch(value) for value in frame["event_time"]]
    unparseable = frame["event_time"].notna() & frame[EVENT_EPOCH].isna()
    frame[EVENT_TIME_BAD] = np.where(unparseable, "not an ISO-8601 time with zone", None)
    return frame


def _flat_columns() -> list[str]:
    return [PARSE_ERROR, *REQUIRED_FIELDS, "source"]


def _flatten_one(value) -> dict:
    empty = dict.fromkeys(_flat_columns())
    try:
        text = value.decode("utf-8") if isinstance(value, bytes | bytearray) else value
        event = json.loads(text)
    except (TypeError, ValueError, RecursionError) as error:  # incl. too many digits
        return {**empty, PARSE_ERROR: f"not JSON: {str(error)[:120]}"}
    if not isinstance(event, dict):
        return {**empty, PARSE_ERROR: f"not a JSON object: {type(event).__name__}"}
    flat = {**empty, PARSE_ERROR: None}
    for name in ("machine_id", "cycle", "event_time", "schema_version", "source"):
        flat[name] = event.get(name)
    for group, names in (("settings", SETTING_FIELDS), ("sensors", SENSOR_FIELDS)):
        nested = event.get(group)
        nested = nested if isinstance(nested, dict) else {}
        for name in names:
            flat[name] = nested.get(name)
    return flat


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_text(value) -> bool:
    return isinstance(value, str)


# Type checks in Python: GE's type-list check lets a bool pass as an int (bool subclasses
# int), and a bool cycle became a null cycle in silver (found by fuzzing).
TYPE_FAULT = "__type_fault"
TYPE_CHECKS = {
    "machine_id": ("a string", _is_text),
    "cycle": ("an integer", _is_int),
    "schema_version": ("an integer", _is_int),
    "source": ("a string", _is_text),
    **{name: ("a number", _is_number) for name in NUMERIC_FIELDS},
}


def _as_number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return np.nan
    try:
        return float(value)
    except OverflowError:  # an integer beyond the double range: out of every range
        return np.inf if value > 0 else -np.inf


def _as_epoch(value) -> float:
    if not isinstance(value, str):
        return np.nan
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return np.nan
    if parsed.tzinfo is None:
        return np.nan
    return parsed.timestamp()


# ------------------------------------------------------------------ the suite


def build_rules(ranges: Ranges, now_epoch: float, future_tolerance_s: float) -> list[Rule]:
    """The event suite: parse, required fields, types, ranges, cycle > 0, not future."""
    import great_expectations.expectations as gxe

    rules = [Rule("valid_json", gxe.ExpectColumnValuesToBeNull(column=PARSE_ERROR))]
    rules += [
        Rule(f"required:{name}", gxe.ExpectColumnValuesToNotBeNull(column=name))
        for name in REQUIRED_FIELDS
    ]
    rules += [
        Rule(f"type:{name}", gxe.ExpectColumnValuesToBeNull(column=f"{name}{TYPE_FAULT}"))
        for name in TYPE_CHECKS
    ]
    rules.insert(
        len(rules) - len(NUMERIC_FIELDS),
        Rule("type:event_time", gxe.ExpectColumnValuesToBeNull(column=EVENT_TIME_BAD)),
    )
    rules += [
        Rule(
            f"range:{name}",
            gxe.ExpectColumnValuesToBeBetween(column=f"{name}__num", min_value=lo, max_value=hi),
        )
        for name, (lo, hi) in ranges.items()
    ]
    rules += [
        Rule("machine_id_format", gxe.ExpectColumnValuesToBeNull(column=MACHINE_ID_BAD)),
        Rule("cycle_positive", _at_least("cycle__num", 1)),
        Rule(
            "cycle_in_range",
            gxe.ExpectColumnValuesToBeBetween(column="cycle__num", max_value=MAX_CYCLE),
        ),
        Rule(
            "schema_version_known",
            gxe.ExpectColumnValuesToBeInSet(column="schema_version", value_set=SCHEMA_VERSIONS),
        ),
        Rule(
            "event_time_not_future",
            gxe.ExpectColumnValuesToBeBetween(
                column=EVENT_EPOCH, max_value=now_epoch + future_tolerance_s
            ),
        ),
        Rule(
            "event_time_in_range",
            gxe.ExpectColumnValuesToBeBetween(
                column=EVENT_EPOCH,
                min_value=EVENT_TIME_MIN.timestamp(),
                max_value=EVENT_TIME_MAX.timestamp(),
                strict_max=True,
            ),
        ),
    ]
    return rules


def _at_least(column: str, minimum: float):
    import great_expectations.expectations as gxe

    return gxe.ExpectColumnValuesToBeBetween(column=column, min_value=minimum)


def validate_events(frame: pd.DataFrame, rules: list[Rule]) -> ValidationOutcome:
    """Run the rules with GE on `frame` (from flatten_payloads); every failure per row."""
    failed: list[list[str]] = [[] for _ in range(len(frame))]
    results = _run_suite(frame, rules) if len(frame) else [None] * len(rules)
    for rule, result in zip(rules, results, strict=True):
        for row in _unexpected_rows(result, len(frame)) if result is not None else []:
            failed[row].append(rule.name)
    # a payload that is not a JSON object fails only that rule (its fields do not exist)
    failed = [["valid_json"] if "valid_json" in rules_ else rules_ for rules_ in failed]
    summary = [
        _summary_row(rule, result, failed) for rule, result in zip(rules, results, strict=True)
    ]
    columns = ["rule", "expectation", "passed", "element_count", "unexpected_count"]
    return ValidationOutcome(failed, pd.DataFrame(summary, columns=columns))


def _run_suite(frame: pd.DataFrame, rules: list[Rule]) -> list:
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = _context()
    asset = context.data_sources.get("events").get_asset("micro_batch")
    batch = asset.get_batch_definition("whole").get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name="event_quality")
    for rule in rules:
        rule.expectation.meta = {"rule": rule.name}
        suite.add_expectation(rule.expectation)
    result = batch.validate(
        suite,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]},
    )
    by_rule = {res.expectation_config.meta["rule"]: res for res in result.results}
    return [by_rule[rule.name] for rule in rules]


@functools.cache
def _context():
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_pandas("events")
    source.add_dataframe_asset("micro_batch").add_batch_definition_whole_dataframe("whole")
    return context


def _unexpected_rows(result, row_count: int) -> list[int]:
    if result.exception_info and result.exception_info.get("raised_exception"):
        # A rule that cannot even be evaluated marks every row: nothing passes silently.
        return list(range(row_count))
    indexes = result.result.get("unexpected_index_list")
    if not result.success and not indexes:
        return list(range(row_count))  # a column-level failure: no row may pass it
    return sorted({int(item[ROW_ID]) for item in indexes or []})


def _summary_row(rule: Rule, result, failed: list[list[str]]) -> dict:
    unexpected = sum(rule.name in row for row in failed)
    return {
        "rule": rule.name,
        "expectation": result.expectation_config.type if result is not None else "",
        "passed": unexpected == 0,
        "element_count": len(failed),
        "unexpected_count": unexpected,
    }
