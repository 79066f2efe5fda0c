"""The embedded stack: a real single-node Apache Kafka broker (KRaft) from the Maven jars.

`up` formats the storage once, starts ``java -cp '<jars>/*' kafka.Kafka`` bound to
127.0.0.1 as a supervised process (own process group, PID file), waits until it answers
metadata requests and creates the topics. `down` stops exactly that PID. When the environment
names an external broker (``KAFKA_BOOTSTRAP_SERVERS`` or ``PROGNOS_KAFKA_EXTERNAL=true``),
nothing is started.
"""

from __future__ import annotations

import os
import shutil
import socket
import string
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from prognos.core import supervisor
from prognos.core.catalog import topics
from prognos.core.errors import BrokerUnavailableError, PrognosError, SetupMissingError
from prognos.core.settings import PROJECT_ROOT, Settings

INFRA_KAFKA = PROJECT_ROOT / "infra" / "kafka"
BROKER_MARKER = b"kafka.Kafka"  # the broker's main class, on its command line


@dataclass(frozen=True)
class BrokerStatus:
    bootstrap_servers: str
    managed: bool
    pid: int | None
    running: bool
    healthy: bool
    detail: str


def _paths(settings: Settings) -> dict[str, Path]:
    base = settings.run_dir / "kafka"
    return {
        "base": base,
        "data": base / "data",
        "config": base / "server.properties",
        "pid": base / "broker.pid",
        "log": base / "broker.log",
    }


def _host_port(settings: Settings) -> tuple[str, int]:
    host, _, port = settings.kafka_bootstrap_servers.split(",")[0].rpartition(":")
    return host, int(port)


def _kafka_classpath(settings: Settings) -> str:
    jar_dir = settings.jars / "kafka"
    if not any(jar_dir.glob("kafka_2.13-*.jar")):
        raise SetupMissingError(f"Kafka broker jars missing in {jar_dir}: run `make setup`")
    return f"{jar_dir}/*"


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise SetupMissingError("java not found (Java 17 is required): run `make setup`")
    return java


def _write_config(settings: Settings) -> Path:
    paths = _paths(settings)
    host, port = _host_port(settings)
    template = string.Template((INFRA_KAFKA / "server.properties.template").read_text())
    paths["config"].parent.mkdir(parents=True, exist_ok=True)
    paths["config"].write_text(
        template.substitute(
            host=host,
            port=port,
            controller_port=settings.kafka_controller_port,
            log_dirs=paths["data"],
        )
    )
    return paths["config"]


def _format_storage_once(settings: Settings, config: Path) -> None:
    if (_paths(settings)["data"] / "meta.properties").exists():
        return
    command = [
        _java(),
        "-cp",
        _kafka_classpath(settings),
        "kafka.tools.StorageTool",
        "format",
        "-t",
        _cluster_id(),
        "-c",
        str(config),
        "--standalone",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise PrognosError(f"Kafka storage format failed: {result.stdout}{result.stderr}")


def _cluster_id() -> str:
    """A random KRaft cluster id; never starting with '-', which the tool would read as
    an option (Kafka's own Uuid.randomUuid avoids it the same way)."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def clean_stale_pid(settings: Settings) -> bool:
    """Remove a PID file whose broker is gone; True if one was removed."""
    pid_file = _paths(settings)["pid"]
    return pid_file.exists() and not supervisor.is_alive(pid_file, BROKER_MARKER)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def broker_answers(bootstrap_servers: str, timeout_s: float = 5.0) -> bool:
    """True when the broker answers a metadata request."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            request_timeout_ms=int(timeout_s * 1000),
        )
    except (KafkaError, OSError, ValueError, AssertionError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def wait_for_broker(bootstrap_servers: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if broker_answers(bootstrap_servers, timeout_s=3.0):
            return
        time.sleep(0.5)
    raise BrokerUnavailableError(
        f"Kafka broker at {bootstrap_servers} did not answer within {timeout_s:.0f} s"
    )


def ensure_topics(settings: Settings) -> list[str]:
    """Create the pipeline's topics that do not exist yet; return the created names."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        existing = set(admin.list_topics())
        wanted = [t for t in topics(settings).values() if t.name not in existing]
        if wanted:
            admin.create_topics(
                [
                    NewTopic(t.name, t.partitions, t.replication_factor, topic_configs=t.configs)
                    for t in wanted
                ]
            )
        return [t.name for t in wanted]
    finally:
        admin.close()


def up(settings: Settings, timeout_s: float = 90.0) -> BrokerStatus:
    """Start the embedded broker (or use the external one) and create the topics."""
    if settings.kafka_is_external:
        wait_for_broker(settings.kafka_bootstrap_servers, timeout_s=min(timeout_s, 30.0))
        ensure_topics(settings)
        return status(settings)
    if settings.kafka_cluster_size > 1:
        from prognos.core import kafka_cluster

        kafka_cluster.up(settings, timeout_s)
        ensure_topics(settings)
        return status(settings)
    clean_stale_pid(settings)
    pid = supervisor.read_pid(_paths(settings)["pid"])
    if pid is None:
        pid = _start_broker(settings)
    wait_for_broker(settings.kafka_bootstrap_servers, timeout_s)
    ensure_topics(settings)
    return status(settings)


def _start_broker(settings: Settings) -> int:
    host, port = _host_port(settings)
    for taken in (port, settings.kafka_controller_port):
        if port_in_use(host, taken):
            raise PrognosError(
                f"port {host}:{taken} is already taken by another process; "
                "stop it or set PROGNOS_KAFKA_BOOTSTRAP_SERVERS / PROGNOS_KAFKA_CONTROLLER_PORT"
            )
    config = _write_config(settings)
    _format_storage_once(settings, config)
    paths = _paths(settings)
    env = {**os.environ, "KAFKA_HEAP_OPTS": ""}
    command = [
        _java(),
        f"-Xmx{settings.kafka_heap}",
        f"-Xms{settings.kafka_heap}",
        "-XX:+UseG1GC",
        "-XX:ActiveProcessorCount=2",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={INFRA_KAFKA / 'log4j2.yaml'}",
        "-cp",
        _kafka_classpath(settings),
        "kafka.Kafka",
        str(config),
    ]
    spec = supervisor.ProcessSpec(
        name="kafka broker",
        command=command,
        pid_file=paths["pid"],
        log_file=paths["log"],
        env=env,
        marker=BROKER_MARKER,
    )
    return supervisor.start(spec)


def down(settings: Settings, timeout_s: float = 30.0) -> bool:
    """Stop the broker (or cluster nodes) this project started (SIGTERM, then SIGKILL);
    True if one ran."""
    if settings.kafka_cluster_size > 1:
        from prognos.core import kafka_cluster

        return bool(kafka_cluster.down(settings, timeout_s))
    return supervisor.stop(_paths(settings)["pid"], timeout_s, marker=BROKER_MARKER)


def status(settings: Settings) -> BrokerStatus:
    servers = settings.kafka_bootstrap_servers
    if settings.kafka_is_external:
        healthy = broker_answers(servers)
        return BrokerStatus(servers, False, None, healthy, healthy, "external broker")
    if settings.kafka_cluster_size > 1:
        return _cluster_status(settings)
    stale = clean_stale_pid(settings)
    pid = supervisor.read_pid(_paths(settings)["pid"])
    running = pid is not None
    healthy = running and broker_answers(servers)
    if running:
        detail = "healthy" if healthy else "process running, broker not answering"
    else:
        detail = "stale PID file removed" if stale else "not running"
    return BrokerStatus(servers, True, pid, running, healthy, detail)


def _cluster_status(settings: Settings) -> BrokerStatus:
    """The cluster as one broker: running while any node runs, healthy when all are."""
    from prognos.core import kafka_cluster

    nodes = kafka_cluster.status(settings)
    running = sum(n.running for n in nodes)
    healthy = sum(n.healthy for n in nodes)
    detail = f"cluster of {len(nodes)}: {healthy} healthy, {running} running"
    return BrokerStatus(
        settings.kafka_bootstrap_servers, True, None, running > 0, healthy == len(nodes), detail
    )


def status_dict(settings: Settings) -> dict:
    if settings.kafka_cluster_size > 1 and not settings.kafka_is_external:
        from prognos.core import kafka_cluster

        return {
            "kafka": asdict(status(settings)),
            "kafka_nodes": kafka_cluster.status_dicts(settings),
        }
    return {"kafka": asdict(status(settings))}
