"""Replay C-MAPSS as a live fleet: one event per machine cycle, published to Kafka.

Machines report round-robin by cycle (every machine's cycle 1, then cycle 2, ...), the
event time is start + cycle x cycle_seconds, and the key is the machine id. The producer
uses acks=all and idempotence; delivery is counted from the broker's acknowledgements.
`scale=K` multiplies the fleet: copy k > 0 of a machine is its trajectory resampled to a
slightly different length with small noise, under a new machine id.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from prognos.core.data import SENSOR_COLUMNS, SETTING_COLUMNS, check_subset_split, load_cmapss
from prognos.core.errors import BrokerUnavailableError, PrognosError
from prognos.core.events import (
    SCHEMA_VERSION,
    Event,
    encode_wire,
    event_from_dict,
    format_event_time,
    machine_id_for,
)
from prognos.core.settings import Settings, get_settings

READING_COLUMNS = (*SETTING_COLUMNS, *SENSOR_COLUMNS)
NOISE_FRACTION = 0.02  # noise std as a fraction of each column's std in the subset
STRETCH_RANGE = (0.8, 1.2)  # resampled length of a scaled copy, relative to the original
ENCODER_PROCESS_MIN_EVENTS = 50_000  # smaller fleets encode inline (a process costs ~1 s)
ENCODE_CHUNK_EVENTS = 5_000
ENCODE_CHUNKS_AHEAD = 4


class ReplayDeliveryError(PrognosError):
    """Some events could not be delivered to the broker."""


@dataclass(frozen=True)
class ReplaySummary:
    topic: str
    machines: int
    sent: int
    failed: int
    elapsed_s: float
    first_error: str | None = None

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        return (
            f"replay: sent {self.sent} events of {self.machines} machines to {self.topic}, "
            f"failed {self.failed}, elapsed {self.elapsed_s:.1f} s, {self.rate:.0f} events/s"
        )


def fleet_frame(
    subset: str,
    split: str,
    machines: int | None = None,
    scale: int = 1,
    settings: Settings | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The fleet's readings with a `machine` id column, in the order a live fleet reports."""
    check_subset_split(subset, split)
    if machines is not None and machines < 1:
        raise PrognosError(f"--machines must be >= 1, got {machines}")
    if scale < 1:
        raise PrognosError(f"--scale must be >= 1, got {scale}")
    frame = load_cmapss(subset, split, settings)
    if machines is not None:
        kept = sorted(frame["machine_id"].unique())[:machines]
        frame = frame[frame["machine_id"].isin(kept)]
    frame = frame[["machine_id", "cycle", *READING_COLUMNS]]
    copies = [_with_ids(frame, subset, split, 0)]
    rng = np.random.default_rng(seed)
    noise_scale = frame[list(READING_COLUMNS)].std().fillna(0).to_numpy() * NOISE_FRACTION
    for copy in range(1, scale):
        copies.append(_with_ids(_resampled(frame, rng, noise_scale), subset, split, copy))
    fleet = pd.concat(copies, ignore_index=True)
    return fleet.sort_values(["cycle", "machine"], kind="stable", ignore_index=True)


def _with_ids(frame: pd.DataFrame, subset: str, split: str, copy: int) -> pd.DataFrame:
    units = frame["machine_id"].unique()
    ids = {unit: machine_id_for(subset, split, int(unit), copy) for unit in units}
    return frame.assign(machine=frame["machine_id"].map(ids))


def _resampled(frame: pd.DataFrame, rng: np.random.Generator, noise_scale) -> pd.DataFrame:
    parts = []
    for unit, trajectory in frame.groupby("machine_id", sort=True):
        values = trajectory[list(READING_COLUMNS)].to_numpy()
        length = max(2, round(len(values) * rng.uniform(*STRETCH_RANGE)))
        positions = np.linspace(0, len(values) - 1, length)
        columns = [np.interp(positions, np.arange(len(values)), col) for col in values.T]
        resampled = np.column_stack(columns) + rng.normal(0, 1, (length, 1)) * noise_scale
        part = pd.DataFrame(resampled, columns=list(READING_COLUMNS))
        part.insert(0, "cycle", np.arange(1, length + 1))
        part.insert(0, "machine_id", unit)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def fleet_events(
    fleet: pd.DataFrame, start: datetime, cycle_seconds: float, source: str
) -> Iterator[Event]:
    """Events of a fleet frame (from fleet_frame), in its order."""
    for wire in fleet_wire_events(fleet, start, cycle_seconds, source):
        yield event_from_dict(wire)


def fleet_messages(
    fleet: pd.DataFrame, start: datetime, cycle_seconds: float, source: str
) -> Iterator[tuple[bytes, bytes]]:
    """(key, validated JSON payload) of each event of a fleet frame, in its order."""
    for wire in fleet_wire_events(fleet, start, cycle_seconds, source):
        yield wire["machine_id"].encode(), encode_wire(wire)


def encoded_messages(
    fleet: pd.DataFrame, start: datetime, cycle_seconds: float, source: str
) -> Iterator[tuple[bytes, bytes]]:
    """fleet_messages; for large fleets a helper process encodes chunks ahead of the caller,
    so building and validating events runs on another core while the producer sends."""
    if len(fleet) < ENCODER_PROCESS_MIN_EVENTS:
        yield from fleet_messages(fleet, start, cycle_seconds, source)
        return
    spawn = multiprocessing.get_context("spawn")  # no fork: the caller may run threads
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as encoder:
        ahead: deque = deque()
        for first in range(0, len(fleet), ENCODE_CHUNK_EVENTS):
            chunk = fleet.iloc[first : first + ENCODE_CHUNK_EVENTS]
            ahead.append(encoder.submit(_encoded_chunk, chunk, start, cycle_seconds, source))
            if len(ahead) == ENCODE_CHUNKS_AHEAD:
                yield from ahead.popleft().result()
        while ahead:
            yield from ahead.popleft().result()


def _encoded_chunk(chunk, start, cycle_seconds, source) -> list[tuple[bytes, bytes]]:
    return list(fleet_messages(chunk, start, cycle_seconds, source))


def fleet_wire_events(
    fleet: pd.DataFrame, start: datetime, cycle_seconds: float, source: str
) -> Iterator[dict]:
    """Events of a fleet frame in their JSON form (as Event.to_dict gives them)."""
    step = timedelta(seconds=cycle_seconds)
    times = {
        cycle: format_event_time(start + step * int(cycle)) for cycle in fleet["cycle"].unique()
    }
    readings = fleet[list(READING_COLUMNS)].to_numpy(dtype=float).tolist()
    cycles = fleet["cycle"].tolist()
    for machine, cycle, values in zip(fleet["machine"], cycles, readings, strict=True):
        yield {
            "schema_version": SCHEMA_VERSION,
            "machine_id": machine,
            "cycle": cycle,
            "event_time": times[cycle],
            "settings": dict(zip(SETTING_COLUMNS, values[:3], strict=False)),
            "sensors": dict(zip(SENSOR_COLUMNS, values[3:], strict=False)),
            "source": source,
        }


def producer_config(settings: Settings) -> dict:
    """The replayer's producer: acks=all, idempotent, bounded retries and blocking."""
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "acks": "all",
        "enable_idempotence": True,
        "retries": 10,
        "retry_backoff_ms": 200,
        "delivery_timeout_ms": 30000,
        "request_timeout_ms": 10000,
        "max_block_ms": 15000,
        "linger_ms": 5,
        "batch_size": 128 * 1024,
        "max_in_flight_requests_per_connection": 5,
    }


def connect_producer(settings: Settings, attempts: int = 3, timeout_s: float = 3.0):
    """A KafkaProducer, after at most `attempts` bootstrap tries with backoff."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    last_error: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(2.0 ** (attempt - 1))
        try:
            return KafkaProducer(
                **producer_config(settings), bootstrap_timeout_ms=int(timeout_s * 1000)
            )
        except (KafkaError, OSError) as error:
            last_error = error
    raise BrokerUnavailableError(
        f"Kafka broker at {settings.kafka_bootstrap_servers} unreachable after {attempts} "
        f"attempts ({last_error})"
    )


class _Deliveries:
    """Counts the broker's acknowledgements from the send futures, oldest first, in the
    sending thread (cheaper than a callback pair per record)."""

    def __init__(self) -> None:
        self.pending: deque = deque()
        self.acked = 0
        self.failed = 0
        self.first_error: str | None = None

    def track(self, future) -> None:
        self.pending.append(future)

    def error(self, exception) -> None:
        self.failed += 1
        self.first_error = self.first_error or str(exception)

    def settle(self) -> None:
        """Count the futures that are done, up to the first one still in flight."""
        pending = self.pending
        while pending and pending[0].is_done:
            future = pending.popleft()
            if future.exception is None:
                self.acked += 1
            else:
                self.error(future.exception)

    def wait_settled(self, timeout_s: float) -> None:
        """Wait until every tracked record is done (or the timeout passes)."""
        deadline = time.monotonic() + timeout_s
        self.settle()
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.05)
            self.settle()


def default_start(fleet: pd.DataFrame, cycle_seconds: float) -> datetime:
    """Cycle 0 such that the fleet's last cycle is stamped now: no event is in the future."""
    now = datetime.now(UTC).replace(microsecond=0)
    return now - timedelta(seconds=float(fleet["cycle"].max()) * cycle_seconds)


def replay(
    subset: str = "FD001",
    split: str = "test",
    machines: int | None = None,
    rate: float | None = None,
    cycle_seconds: float = 60.0,
    start: datetime | None = None,
    scale: int = 1,
    source: str = "replay",
    settings: Settings | None = None,
    progress: bool = False,
    connect_attempts: int = 3,
    seed: int = 0,
) -> ReplaySummary:
    """Publish a subset/split as events; the summary counts acknowledged deliveries."""
    settings = settings or get_settings()
    if rate is not None and rate <= 0:
        raise PrognosError(f"--rate must be > 0, got {rate}")
    if cycle_seconds <= 0:
        raise PrognosError(f"--cycle-seconds must be > 0, got {cycle_seconds}")
    fleet = fleet_frame(subset, split, machines, scale, settings, seed)
    start = start or default_start(fleet, cycle_seconds)
    messages = encoded_messages(fleet, start, cycle_seconds, source)
    producer = connect_producer(settings, attempts=connect_attempts)
    try:
        _require_topic(producer, settings.topic_readings)
        return _publish(producer, settings.topic_readings, messages, fleet, rate, progress)
    finally:
        _close_quietly(producer)


def _close_quietly(producer) -> None:
    """Close the producer; undelivered records are already counted as failed."""
    from kafka.errors import KafkaError

    for attempt in range(3):
        try:
            producer.close(timeout=5)
            return
        except KafkaError:
            time.sleep(attempt + 1)
    # kafka-python can leave a split batch "not done" after MessageSizeTooLarge errors,
    # so close() keeps failing in flush(): stop its sender thread directly.
    producer._sender.force_close()
    producer._closed = True


def _require_topic(producer, topic: str) -> None:
    from kafka.errors import KafkaError

    try:
        partitions = producer.partitions_for(topic)
    except KafkaError:
        partitions = None
    if not partitions:
        raise PrognosError(f"topic {topic} does not exist on the broker: run `prognos up`")


def _publish(producer, topic, messages, fleet, rate, progress) -> ReplaySummary:
    from kafka.errors import KafkaError
    from tqdm import tqdm

    deliveries = _Deliveries()
    total = len(fleet)
    bar = tqdm(total=total, unit="ev", file=sys.stderr, disable=not progress)
    began = time.monotonic()
    for index, (key, payload) in enumerate(messages):
        if index == 0:
            began = time.monotonic()  # the rate counts from the first send
        if rate is not None:
            _wait_until(began + index / rate)
        try:
            deliveries.track(producer.send(topic, key=key, value=payload))
        except KafkaError as error:
            deliveries.error(error)
        if index % 1000 == 999:
            deliveries.settle()
            bar.update(1000)
    flush_error = None
    try:
        producer.flush(timeout=60)
    except KafkaError as error:  # records not acknowledged by now count as failed below
        flush_error = str(error)
    deliveries.wait_settled(timeout_s=10 if flush_error else 1)
    bar.update(total - bar.n)
    bar.close()
    return ReplaySummary(
        topic=topic,
        machines=fleet["machine"].nunique(),
        sent=deliveries.acked,
        failed=total - deliveries.acked,
        elapsed_s=time.monotonic() - began,
        first_error=deliveries.first_error or flush_error,
    )


def _wait_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)
