"""A local KRaft Kafka cluster: N combined controller+broker nodes on 127.0.0.1.

The nodes run the same jars as the single broker (``java -cp '<jars>/kafka/*' kafka.Kafka``)
with infra/kafka/cluster-node.properties.template: one static voter set, one cluster id
(kept beside the nodes, so every node's storage is formatted once with it), distinct ports
and data dirs. Node k (0-based) serves the k-th address of ``kafka_bootstrap_servers`` and
the controller port + 2k. Each node is a supervised process (prognos.core.supervisor), so
a test can SIGKILL one and start it again.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from prognos.core import stack, supervisor
from prognos.core.errors import BrokerUnavailableError, PrognosError
from prognos.core.settings import Settings

TEMPLATE = stack.INFRA_KAFKA / "cluster-node.properties.template"


@dataclass(frozen=True)
class KafkaNode:
    node_id: int
    host: str
    port: int
    controller_port: int
    base: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def config(self) -> Path:
        return self.base / "server.properties"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def pid_file(self) -> Path:
        return self.base / "node.pid"

    @property
    def log_file(self) -> Path:
        return self.base / "node.log"

    @property
    def marker(self) -> bytes:
        """Only a process started with this node's config counts as this node."""
        return str(self.config).encode()


@dataclass(frozen=True)
class NodeStatus:
    node_id: int
    address: str
    pid: int | None
    running: bool
    healthy: bool
    leader_of: int


def cluster_dir(settings: Settings) -> Path:
    return settings.run_dir / "kafka-cluster"


def nodes(settings: Settings) -> list[KafkaNode]:
    """The cluster's nodes as the settings place them (ids 1..N)."""
    addresses = [a.strip() for a in settings.kafka_bootstrap_servers.split(",")]
    placed = []
    for index, address in enumerate(addresses[: settings.kafka_cluster_size]):
        host, _, port = address.rpartition(":")
        node_id = index + 1
        placed.append(
            KafkaNode(
                node_id,
                host,
                int(port),
                settings.kafka_controller_port + 2 * index,
                cluster_dir(settings) / f"node-{node_id}",
            )
        )
    return placed


def node(settings: Settings, node_id: int) -> KafkaNode:
    for candidate in nodes(settings):
        if candidate.node_id == node_id:
            return candidate
    raise PrognosError(f"no Kafka node {node_id} in a cluster of {settings.kafka_cluster_size}")


def _voters(settings: Settings) -> str:
    return ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in nodes(settings))


def _write_config(settings: Settings, kafka_node: KafkaNode) -> None:
    template = string.Template(TEMPLATE.read_text())
    kafka_node.base.mkdir(parents=True, exist_ok=True)
    kafka_node.config.write_text(
        template.substitute(
            node_id=kafka_node.node_id,
            voters=_voters(settings),
            host=kafka_node.host,
            port=kafka_node.port,
            controller_port=kafka_node.controller_port,
            log_dirs=kafka_node.data,
            replication_factor=settings.topic_replication_factor,
            min_insync_replicas=settings.topic_min_insync_replicas,
        )
    )


def cluster_id(settings: Settings) -> str:
    """The cluster's id, made once and shared by every node's storage."""
    path = cluster_dir(settings) / "cluster.id"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(stack._cluster_id())
    return path.read_text().strip()


def _format_storage_once(settings: Settings, kafka_node: KafkaNode) -> None:
    if (kafka_node.data / "meta.properties").exists():
        return
    command = [
        stack._java(),
        "-cp",
        stack._kafka_classpath(settings),
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id(settings),
        "-c",
        str(kafka_node.config),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise PrognosError(
            f"Kafka storage format of node {kafka_node.node_id} failed: "
            f"{result.stdout}{result.stderr}"
        )


def _node_command(settings: Settings, kafka_node: KafkaNode) -> list[str]:
    return [
        stack._java(),
        f"-Xmx{settings.kafka_heap}",
        f"-Xms{settings.kafka_heap}",
        "-XX:+UseG1GC",
        "-XX:ActiveProcessorCount=2",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={stack.INFRA_KAFKA / 'log4j2.yaml'}",
        "-cp",
        stack._kafka_classpath(settings),
        "kafka.Kafka",
        str(kafka_node.config),
    ]


def _check_ports_free(kafka_node: KafkaNode) -> None:
    for port in (kafka_node.port, kafka_node.controller_port):
        if stack.port_in_use(kafka_node.host, port):
            raise PrognosError(
                f"port {kafka_node.host}:{port} of Kafka node {kafka_node.node_id} is taken by "
                "another process; stop it or set PROGNOS_KAFKA_BOOTSTRAP_SERVERS / "
                "PROGNOS_KAFKA_CONTROLLER_PORT"
            )


def is_running(kafka_node: KafkaNode) -> bool:
    return supervisor.is_alive(kafka_node.pid_file, kafka_node.marker)


def start_node(settings: Settings, node_id: int) -> int:
    """Start one node (formatting its storage the first time); return its PID."""
    kafka_node = node(settings, node_id)
    if is_running(kafka_node):
        return supervisor.read_pid(kafka_node.pid_file)
    _check_ports_free(kafka_node)
    _write_config(settings, kafka_node)
    _format_storage_once(settings, kafka_node)
    spec = supervisor.ProcessSpec(
        name=f"kafka-{node_id}",
        command=_node_command(settings, kafka_node),
        pid_file=kafka_node.pid_file,
        log_file=kafka_node.log_file,
        env={**os.environ, "KAFKA_HEAP_OPTS": ""},
        marker=kafka_node.marker,
    )
    return supervisor.start(spec)


def kill_node(settings: Settings, node_id: int) -> None:
    """SIGKILL one node at once (what a crashed machine looks like to the others)."""
    kafka_node = node(settings, node_id)
    supervisor.kill(kafka_node.pid_file, kafka_node.marker)


def registered_brokers(settings: Settings, timeout_s: float = 5.0) -> set[int]:
    """Ids of the brokers the cluster's metadata lists as up (empty if none answers)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            request_timeout_ms=int(timeout_s * 1000),
        )
    except (KafkaError, OSError, ValueError, AssertionError):
        return set()
    try:
        brokers = admin.describe_cluster()["brokers"]
        return {b["broker_id"] for b in brokers if not b.get("is_fenced", False)}
    except (KafkaError, OSError):
        return set()
    finally:
        admin.close()


def wait_for_brokers(settings: Settings, wanted: set[int], timeout_s: float = 90.0) -> None:
    """Wait until exactly the wanted broker ids are registered (a killed node is gone
    from the metadata once the controller fenced it)."""
    deadline = time.monotonic() + timeout_s
    seen: set[int] = set()
    while time.monotonic() < deadline:
        seen = registered_brokers(settings, timeout_s=3.0)
        if seen == wanted:
            return
        time.sleep(0.5)
    raise BrokerUnavailableError(
        f"Kafka cluster at {settings.kafka_bootstrap_servers}: brokers {sorted(seen)} "
        f"registered after {timeout_s:.0f} s, expected {sorted(wanted)}"
    )


def _layout_file(settings: Settings) -> Path:
    return cluster_dir(settings) / "layout.json"


def recorded(settings: Settings) -> Settings:
    """The settings of the cluster `up` started when these settings name none (so
    `prognos down` and `status` after `prognos up --kafka-cluster 3` find its nodes)."""
    layout = _layout_file(settings)
    if settings.kafka_cluster_size > 1 or settings.kafka_is_external or not layout.exists():
        return settings
    values = json.loads(layout.read_text())
    return settings.model_copy(
        update={
            "kafka_cluster_size": values["size"],
            "kafka_bootstrap_servers": values["bootstrap_servers"],
            "kafka_controller_port": values["controller_port"],
        }
    )


def _record_layout(settings: Settings) -> None:
    layout = {
        "size": settings.kafka_cluster_size,
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "controller_port": settings.kafka_controller_port,
    }
    _layout_file(settings).parent.mkdir(parents=True, exist_ok=True)
    _layout_file(settings).write_text(json.dumps(layout))


def up(settings: Settings, timeout_s: float = 90.0) -> list[NodeStatus]:
    """Start every node that is not running; wait until all are registered brokers."""
    _record_layout(settings)
    started = []
    try:
        for kafka_node in nodes(settings):
            if not is_running(kafka_node):
                start_node(settings, kafka_node.node_id)
                started.append(kafka_node)
        wait_for_brokers(settings, {n.node_id for n in nodes(settings)}, timeout_s)
    except BaseException:
        for kafka_node in started:  # a cluster that failed to form is not left half up
            supervisor.stop(kafka_node.pid_file, 10.0, marker=kafka_node.marker)
        raise
    return status(settings)


def down(settings: Settings, grace_s: float = 30.0) -> list[int]:
    """Stop the nodes this project started (SIGTERM, then SIGKILL); their ids."""
    stopped = [
        n.node_id for n in nodes(settings) if supervisor.stop(n.pid_file, grace_s, marker=n.marker)
    ]
    _layout_file(settings).unlink(missing_ok=True)
    return stopped


def _partitions(settings: Settings, topic: str) -> list[dict]:
    """The topic's partition metadata as the cluster reports it now."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        (described,) = admin.describe_topics([topic])
    finally:
        admin.close()
    if described["error_code"] != 0:
        raise PrognosError(f"topic {topic} is unknown to the cluster: run `prognos up`")
    return described["partitions"]


def partition_leaders(settings: Settings, topic: str) -> dict[int, int]:
    """Partition -> id of its leader node (-1 while it has none)."""
    return {p["partition_index"]: p["leader_id"] for p in _partitions(settings, topic)}


def in_sync_replicas(settings: Settings, topic: str) -> dict[int, list[int]]:
    """Partition -> ids of its in-sync replicas."""
    return {p["partition_index"]: sorted(p["isr_nodes"]) for p in _partitions(settings, topic)}


def status(settings: Settings) -> list[NodeStatus]:
    """Each node: its PID, whether it runs, whether the cluster lists it, how many
    partitions of the readings topic it leads."""
    registered = registered_brokers(settings)
    leaders = _readings_leaders(settings) if registered else {}
    report = []
    for kafka_node in nodes(settings):
        running = is_running(kafka_node)
        report.append(
            NodeStatus(
                kafka_node.node_id,
                kafka_node.address,
                supervisor.read_pid(kafka_node.pid_file) if running else None,
                running,
                running and kafka_node.node_id in registered,
                sum(1 for leader in leaders.values() if leader == kafka_node.node_id),
            )
        )
    return report


def _readings_leaders(settings: Settings) -> dict[int, int]:
    from kafka.errors import KafkaError

    try:
        return partition_leaders(settings, settings.topic_readings)
    except (KafkaError, OSError, PrognosError):
        return {}


def status_dicts(settings: Settings) -> list[dict]:
    return [asdict(s) for s in status(settings)]
