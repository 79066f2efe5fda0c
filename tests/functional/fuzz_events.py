"""Hypothesis strategies of bad sensor events (raw Kafka key and value bytes).

Each bad event starts from a valid FD001 event and breaks it one way: wrong types,
missing and extra fields, NaN/inf, huge numbers, zero/negative cycles, far-future and
ancient timestamps, invalid UTF-8, oversized payloads, unknown schema versions, not JSON,
readings at, just beyond or far beyond the fleet spec's valid ranges (the bounds are valid).
`draw` runs a derandomized @given collector: the same examples on every run.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from prognos.core.data import SENSOR_COLUMNS, SETTING_COLUMNS
from prognos.core.fleet import default_fleet

FIELDS = ("schema_version", "machine_id", "cycle", "event_time", "settings", "sensors", "source")
OVERSIZED_BYTES = (100_000, 300_000)  # under the broker's 1 MB message limit

_wrong_values = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.floats(allow_nan=False, allow_infinity=False),
)
# up to 4000 digits: json.dumps stops at 4300 (not_an_event sends a longer literal)
_huge_int = st.integers(min_value=10, max_value=4000).map(lambda digits: 10**digits)
_huge_number = st.one_of(
    _huge_int,
    _huge_int.map(lambda n: -n),
    st.floats(min_value=1e30, max_value=1.7e308),
    st.just(2**31),
    st.just(2**63),
)
_non_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])
_reading_names = st.sampled_from([*SETTING_COLUMNS, *SENSOR_COLUMNS])


def _dumps(obj) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


def _reading_path(name: str) -> str:
    return "settings" if name in SETTING_COLUMNS else "sensors"


@st.composite
def wrong_type(draw, event: dict) -> bytes:
    name = draw(st.sampled_from(FIELDS))
    bad = dict(event, **{name: draw(_wrong_values)})
    return _dumps(bad)


@st.composite
def wrong_reading_type(draw, event: dict) -> bytes:
    name = draw(_reading_names)
    group = _reading_path(name)
    bad = dict(event, **{group: dict(event[group], **{name: draw(_wrong_values)})})
    return _dumps(bad)


@st.composite
def missing_field(draw, event: dict) -> bytes:
    if draw(st.booleans()):
        name = draw(st.sampled_from(FIELDS))
        return _dumps({k: v for k, v in event.items() if k != name})
    name = draw(_reading_names)
    group = _reading_path(name)
    readings = {k: v for k, v in event[group].items() if k != name}
    return _dumps(dict(event, **{group: readings}))


@st.composite
def extra_field(draw, event: dict) -> bytes:
    name = draw(st.text(min_size=1, max_size=10).filter(lambda n: n not in FIELDS))
    value = draw(_wrong_values)
    if draw(st.booleans()):
        return _dumps(dict(event, **{name: value}))
    return _dumps(dict(event, sensors=dict(event["sensors"], **{f"x_{name}": value})))


@st.composite
def non_finite(draw, event: dict) -> bytes:
    name = draw(_reading_names)
    group = _reading_path(name)
    return _dumps(dict(event, **{group: dict(event[group], **{name: draw(_non_finite)})}))


@st.composite
def huge_number(draw, event: dict) -> bytes:
    value = draw(_huge_number)
    if draw(st.booleans()):
        return _dumps(dict(event, cycle=value))
    name = draw(_reading_names)
    group = _reading_path(name)
    return _dumps(dict(event, **{group: dict(event[group], **{name: value})}))


@st.composite
def out_of_range(draw, event: dict) -> bytes:
    name = draw(_reading_names)
    low, high = default_fleet().ranges[name]
    span = high - low
    value = draw(
        st.one_of(
            st.sampled_from(
                [low, high, math.nextafter(low, -math.inf), math.nextafter(high, math.inf)]
            ),
            st.floats(min_value=0.01, max_value=100.0).map(lambda k: low - k * span),
            st.floats(min_value=0.01, max_value=100.0).map(lambda k: high + k * span),
        )
    )
    group = _reading_path(name)
    return _dumps(dict(event, **{group: dict(event[group], **{name: value})}))


@st.composite
def bad_cycle(draw, event: dict) -> bytes:
    return _dumps(dict(event, cycle=draw(st.integers(min_value=-(2**40), max_value=0))))


@st.composite
def far_future_time(draw, event: dict) -> bytes:
    year = draw(st.integers(min_value=2030, max_value=9999))
    return _dumps(dict(event, event_time=f"{year:04d}-06-01T00:00:00Z"))


@st.composite
def ancient_time(draw, event: dict) -> bytes:
    year = draw(st.integers(min_value=1, max_value=1999))
    return _dumps(dict(event, event_time=f"{year:04d}-01-01T00:00:00+00:00"))


@st.composite
def malformed_time(draw, event: dict) -> bytes:
    text = draw(
        st.one_of(
            st.text(max_size=20),
            st.just("2026-01-01T00:00:00"),  # no zone
            st.just("2026-13-45T99:00:00Z"),
        )
    )
    return _dumps(dict(event, event_time=text))


@st.composite
def invalid_utf8(draw, event: dict) -> bytes:
    raw = _dumps(event)
    at = draw(st.integers(min_value=0, max_value=len(raw)))
    junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80"]))
    return raw[:at] + junk + raw[at:]


@st.composite
def oversized(draw, event: dict) -> bytes:
    size = draw(st.integers(*OVERSIZED_BYTES))
    return _dumps(dict(event, padding="x" * size))


@st.composite
def unknown_schema_version(draw, event: dict) -> bytes:
    version = draw(st.one_of(st.integers().filter(lambda v: v != 1), st.just("1"), st.just(1.0)))
    return _dumps(dict(event, schema_version=version))


@st.composite
def not_an_event(draw, event: dict) -> bytes:
    return draw(
        st.one_of(
            st.binary(max_size=64),
            st.just(b""),
            st.just(b"[" * 100_000),  # nesting deeper than any parser's recursion limit
            st.just(b"1" * 5000),  # an integer literal with more digits than Python allows
            st.sampled_from([b"null", b"[]", b"42", b'"text"', b"{", b"NaN"]),
        )
    )


MUTATIONS = {
    "wrong_type": wrong_type,
    "wrong_reading_type": wrong_reading_type,
    "missing_field": missing_field,
    "extra_field": extra_field,
    "non_finite": non_finite,
    "huge_number": huge_number,
    "out_of_range": out_of_range,
    "bad_cycle": bad_cycle,
    "far_future_time": far_future_time,
    "ancient_time": ancient_time,
    "malformed_time": malformed_time,
    "invalid_utf8": invalid_utf8,
    "oversized": oversized,
    "unknown_schema_version": unknown_schema_version,
    "not_an_event": not_an_event,
}


@st.composite
def bad_event(draw, valid_events: list[dict]) -> tuple[str, bytes | None, bytes]:
    """(mutation name, key, value): a valid event broken one way; the key is its machine
    id, sometimes another machine's, none, or invalid UTF-8."""
    event = draw(st.sampled_from(valid_events))
    mutation = draw(st.sampled_from(sorted(MUTATIONS)))
    value = draw(MUTATIONS[mutation](event))
    key = draw(
        st.sampled_from(
            [event["machine_id"].encode()] * 6
            + [None, b"\xff\xfe", valid_events[0]["machine_id"].encode()]
        )
    )
    return mutation, key, value


def draw(strategy, count: int, check=None) -> list:
    """`count` examples of a strategy, the same on every run (derandomized, no database).

    `check(example)`, when given, runs on each example as the property under test.
    """
    examples: list = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example) -> None:
        if check is not None:
            check(example)
        examples.append(example)

    collect()
    return examples
