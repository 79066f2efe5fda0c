"""Silver's event quality suite: Great Expectations, generated from the event contract.

The rules are the fleet's event contract (prognos.domain.events): the same named rules the
speed layer evaluates in Python. `flatten_payloads` turns raw Kafka values into the
contract's flat records (one row per event); `build_rules` maps each contract rule to a GE
expectation on its column (null, not null, between, in set); `validate_events` runs the
suite with GE on a pandas frame and returns, per row, EVERY rule it failed, plus one
summary row per rule. Valid ranges come from the fleet spec.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from prognos.core.fleet import default_contract
from prognos.domain import events as contract_rules
from prognos.domain.events import EVENT_EPOCH, NUMBER, EventContract

SETTING_FIELDS = tuple(f"setting_{i}" for i in range(1, 4))
SENSOR_FIELDS = tuple(f"sensor_{i}" for i in range(1, 22))
NUMERIC_FIELDS = (*SETTING_FIELDS, *SENSOR_FIELDS)
ROW_ID = "_row_id"

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
    `margin` x span on each side (at least 1e-3 for constant signals): how the ranges of
    fleets/cmapss.toml were computed (a test keeps them equal)."""
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


def flatten_payloads(values: pd.Series, contract: EventContract | None = None) -> pd.DataFrame:
    """One row per payload: the contract's flat record (raw fields as objects, numeric
    copies as floats) and a row id."""
    contract = contract or default_contract()
    records = [contract.flat_record(value) for value in values]
    numeric = {name for name in contract.columns if name.endswith(NUMBER)} | {EVENT_EPOCH}
    frame = pd.DataFrame(
        {
            name: pd.Series([r[name] for r in records], dtype=float)
            if name in numeric
            else pd.Series([_storable(r[name]) for r in records], dtype=object)
            for name in contract.columns
        }
    )
    frame[ROW_ID] = np.arange(len(frame), dtype=np.int64)
    return frame


def _storable(value):
    """A raw value as pandas and GE can hold it. The rules ask only whether a raw value is
    there (the type faults and numeric copies are their own columns), so a value GE cannot
    hash (GE fingerprints each frame: an int beyond 64 bits overflows pandas's hashing, a
    list cannot be hashed) becomes a short text; strings, which silver stores, stay as sent."""
    if value is None or isinstance(value, str | float | bool):
        return value
    if isinstance(value, int) and value.bit_length() < 64:
        return value
    return f"<{type(value).__name__}>"


# ------------------------------------------------------------------ the suite


def build_rules(
    ranges: Ranges | None,
    now_epoch: float,
    future_tolerance_s: float,
    contract: EventContract | None = None,
) -> list[Rule]:
    """The GE suite of the contract's rules (its ranges replaced by `ranges` if given)."""
    contract = contract or default_contract()
    if ranges is not None:
        contract = contract.with_ranges(ranges)
    return [
        Rule(rule.name, _expectation(rule))
        for rule in contract.rules(now_epoch, future_tolerance_s)
    ]


def _expectation(rule: contract_rules.Rule):
    """The GE expectation that checks `rule` on its column of the flat records."""
    import great_expectations.expectations as gxe

    if rule.kind == "null":
        return gxe.ExpectColumnValuesToBeNull(column=rule.column)
    if rule.kind == "not_null":
        return gxe.ExpectColumnValuesToNotBeNull(column=rule.column)
    if rule.kind == "in_set":
        return gxe.ExpectColumnValuesToBeInSet(column=rule.column, value_set=list(rule.allowed))
    return gxe.ExpectColumnValuesToBeBetween(
        column=rule.column,
        min_value=rule.low,
        max_value=rule.high,
        strict_max=rule.strict_high,
    )


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
