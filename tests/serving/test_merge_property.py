"""Merge correctness under interleavings: a simulated speed layer and batch layer write the
real Delta tables (delta-rs) following their protocol (pending offsets, a speed layer whose
cached boundary lags, expiry after a batch run), while a refresher swaps snapshots in a
background thread. Every snapshot ever served must equal a from-scratch recomputation over
the events it can see: those the pinned manifest covers plus those the speed layer had
processed at the pinned speed-view version. None counted twice, none missed."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

import pytest
from serving_support import lake_settings, publish, speed_row, state_row, write_rows

from prognos.core.alerting import alert_level
from prognos.core.boundary import uncovered
from serving_layer.snapshot import SnapshotStore
from serving_layer.views import DeltaViews

pytestmark = pytest.mark.unit

MACHINES, PARTITIONS, CYCLES = 5, 2, 12


@dataclass(frozen=True)
class Event:
    machine_id: str
    cycle: int
    partition: int
    offset: int


def rul_at(cycle: int) -> float:
    return 100.0 - cycle


def delivery_order(rng: random.Random) -> list[Event]:
    """Events keyed by machine: per machine in cycle order, machines interleaved at random."""
    queues = {f"m{i}": list(range(1, CYCLES + 1)) for i in range(MACHINES)}
    next_offset = [0] * PARTITIONS
    events = []
    while queues:
        machine_id = rng.choice(sorted(queues))
        cycle = queues[machine_id].pop(0)
        partition = int(machine_id[1:]) % PARTITIONS
        events.append(Event(machine_id, cycle, partition, next_offset[partition]))
        next_offset[partition] += 1
        if not queues[machine_id]:
            del queues[machine_id]
    return events


@dataclass
class World:
    settings: object
    events: list[Event]
    delivered: int = 0
    processed: set = field(default_factory=set)  # indices the speed layer has processed
    pending: dict = field(default_factory=dict)  # machine -> uncovered offsets (speed state)
    speed_cache: dict = field(default_factory=dict)  # the speed layer's (lagging) boundary
    floors: dict = field(default_factory=dict)  # newest published boundary
    processed_at: dict = field(default_factory=dict)  # speed_view version -> processed set
    lock: threading.Lock = field(default_factory=threading.Lock)

    def deliver(self, count: int) -> None:
        self.delivered = min(len(self.events), self.delivered + count)

    def speed_tick(self) -> None:
        for index in range(self.delivered):
            if index not in self.processed:
                event = self.events[index]
                self.pending.setdefault(event.machine_id, []).append(event.offset)
                self.processed.add(index)
        self._write_speed_view(self.speed_cache)

    def _write_speed_view(self, boundary: dict) -> None:
        rows = []
        for machine_id, offsets in sorted(self.pending.items()):
            partition = int(machine_id[1:]) % PARTITIONS
            self.pending[machine_id] = uncovered(offsets, partition, boundary)
            if self.pending[machine_id]:
                cycle = max(
                    e.cycle
                    for i, e in enumerate(self.events)
                    if i in self.processed and e.machine_id == machine_id
                )
                rows.append(
                    speed_row(
                        machine_id,
                        cycle,
                        self.pending[machine_id],
                        rul_at(cycle),
                        partition=partition,
                    )
                )
        processed = frozenset(self.processed)
        version = write_rows(self.settings, "speed_view", rows, mode="overwrite")
        with self.lock:
            self.processed_at[version] = processed

    def batch_run(self) -> None:
        """The batch covers everything delivered so far (it reads Kafka on its own)."""
        covered = self.events[: self.delivered]
        floors = {p: 0 for p in range(PARTITIONS)}
        for event in covered:
            floors[event.partition] = max(floors[event.partition], event.offset + 1)
        rows = [
            state_row(m, max(e.cycle for e in mine), len(mine), rul_at(max(e.cycle for e in mine)))
            for m in sorted({e.machine_id for e in covered})
            for mine in [[e for e in covered if e.machine_id == m]]
        ]
        version = write_rows(self.settings, "machine_state", rows, mode="overwrite")
        publish(self.settings, f"run-{version}", version, floors)
        self.floors = floors

    def speed_sees_manifest(self) -> None:
        self.speed_cache = dict(self.floors)

    def expire(self) -> None:
        self._write_speed_view(self.floors)

    def expected(self, snapshot) -> dict[str, tuple[int, int, float]]:
        floors = snapshot.boundary.partition_offsets if snapshot.boundary else {}
        with self.lock:
            processed = self.processed_at.get(snapshot.versions.get("speed_view"), frozenset())
        seen = [
            e
            for i, e in enumerate(self.events)
            if i in processed or e.offset < floors.get(e.partition, 0)
        ]
        result = {}
        for machine_id in {e.machine_id for e in seen}:
            cycles = [e.cycle for e in seen if e.machine_id == machine_id]
            result[machine_id] = (len(cycles), max(cycles), rul_at(max(cycles)))
        return result


def served(snapshot) -> dict[str, tuple[int, int, float]]:
    return {
        m: (s["readings_count"], s["last_cycle"], s["predicted_rul"])
        for m, s in snapshot.machines.items()
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_snapshot_equals_recomputation(tmp_path, seed):
    rng = random.Random(seed)
    settings = lake_settings(tmp_path)
    world = World(settings, delivery_order(rng))
    store = SnapshotStore(DeltaViews(settings), lambda rul: alert_level(rul, settings))
    snapshots, stop = [], threading.Event()

    def refresher():
        while not stop.is_set():
            if store.refresh():
                snapshots.append(store.current)

    thread = threading.Thread(target=refresher, daemon=True)
    thread.start()
    try:
        steps = [world.speed_tick] * 4 + [world.batch_run, world.speed_sees_manifest, world.expire]
        while world.delivered < len(world.events) or rng.random() < 0.3:
            world.deliver(rng.randint(1, 6))
            rng.choice(steps)()
        world.speed_tick()
        world.batch_run()
    finally:
        stop.set()
        thread.join(timeout=60)
    store.refresh()
    snapshots.append(store.current)
    assert len(snapshots) > 5
    for snapshot in snapshots:
        assert served(snapshot) == world.expected(snapshot), snapshot.versions
    final = served(snapshots[-1])
    assert final == {f"m{i}": (CYCLES, CYCLES, rul_at(CYCLES)) for i in range(MACHINES)}
