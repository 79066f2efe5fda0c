"""Replay throughput: the replayer vs a bare kafka-python producer loop (same payloads,
same producer settings), beside the broker's own ceiling from Kafka's ProducerPerformance.

Starts its own broker on free ports in a temporary state dir and stops it at the end.
Check: replay events/s >= 0.8 x the bare loop's events/s (median of paired rounds).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import BenchResult, median, parse_args
from prognos.core import stack
from prognos.core.replay import fleet_frame, fleet_messages, producer_config, replay
from prognos.core.settings import Settings, load_settings

START = datetime(2026, 1, 1, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bench_settings(state_dir: Path) -> Settings:
    return load_settings(
        state_dir=state_dir,
        jars_dir=load_settings().jars,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
        kafka_external=False,
    )


def new_topic(settings: Settings) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    name = f"bench-replay-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        admin.create_topics([NewTopic(name, settings.topic_readings_partitions, 1)])
        admin.wait_for_topics([name])
    finally:
        admin.close()
    return name


def replay_rate(settings: Settings, split: str, scale: int) -> tuple[float, int]:
    topic_settings = settings.model_copy(update={"topic_readings": new_topic(settings)})
    summary = replay("FD001", split, scale=scale, start=START, settings=topic_settings)
    if summary.failed:
        raise SystemExit(f"replay failed to deliver {summary.failed} events")
    return summary.rate, summary.sent


def bare_loop_rate(settings: Settings, payloads: list[tuple[bytes, bytes]]) -> float:
    from kafka import KafkaProducer

    topic = new_topic(settings)
    producer = KafkaProducer(**producer_config(settings))
    try:
        producer.partitions_for(topic)
        began = time.monotonic()
        for key, value in payloads:
            producer.send(topic, key=key, value=value)
        producer.flush()
        return len(payloads) / (time.monotonic() - began)
    finally:
        producer.close()


def producer_performance(settings: Settings, records: int, record_size: int) -> float:
    """Records/s from Kafka's own producer performance tool (acks=all)."""
    command = [
        "java",
        "-Xmx256m",
        "-cp",
        f"{settings.jars / 'kafka'}/*",
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        new_topic(settings),
        "--num-records",
        str(records),
        "--record-size",
        str(record_size),
        "--throughput",
        "-1",
        "--producer-props",
        f"bootstrap.servers={settings.kafka_bootstrap_servers}",
        "acks=all",
    ]
    output = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    summary = re.findall(r"(\d+) records sent, ([\d.]+) records/sec", output.stdout)
    return float(summary[-1][1])


def main() -> None:
    args = parse_args(__doc__)
    split, scale, rounds = ("test", 1, 5) if args.quick else ("train", 5, 5)
    result = BenchResult("replay", args.quick)
    with tempfile.TemporaryDirectory(prefix="prognos-bench-replay-") as state_dir:
        settings = bench_settings(Path(state_dir))
        try:
            stack.up(settings)
            fleet = fleet_frame("FD001", split, scale=scale, settings=settings)
            payloads = list(fleet_messages(fleet, START, 60.0, "replay"))
            record_size = round(sum(len(value) for _, value in payloads) / len(payloads))
            replay_rates, bare_rates = [], []
            for _ in range(rounds):
                rate, sent = replay_rate(settings, split, scale)
                replay_rates.append(rate)
                bare_rates.append(bare_loop_rate(settings, payloads))
            ceiling = producer_performance(settings, max(len(payloads), 50_000), record_size)
        finally:
            stack.down(settings)
    ratio = median([r / b for r, b in zip(replay_rates, bare_rates, strict=True)])
    result.figures.update(
        events=sent,
        machines=int(fleet["machine"].nunique()),
        rounds=rounds,
        replay_events_per_s=round(median(replay_rates)),
        replay_events_per_s_runs=[round(r) for r in replay_rates],
        replay_vs_bare_ratio=round(ratio, 3),
    )
    result.reference.update(
        bare_kafka_python_events_per_s=round(median(bare_rates)),
        bare_kafka_python_events_per_s_runs=[round(r) for r in bare_rates],
        producer_performance_records_per_s=round(ceiling),
        producer_performance_record_size=record_size,
    )
    result.notes.append(
        "replay rate counts acknowledged events from the first send to the final flush "
        "(event building and JSON encoding included, data loading excluded); the bare loop "
        "sends pre-encoded payloads with the same producer settings (acks=all, idempotent). "
        "Rounds alternate replay and bare loop; the ratio is the median of the per-round "
        "ratios (each pair ran back to back, so shared-machine load affects both alike), the "
        "rates are medians, all rounds are listed."
    )
    result.check("replay_vs_bare_kafka_python_ratio", ratio, ">=", 0.8)
    result.finish()


if __name__ == "__main__":
    main()
