"""Deployment manifests, Prometheus and Grafana configuration, checked by parsing (no Docker
or Kubernetes here): images, ports and environment agree with prognos.core.settings, and
every metric the dashboard queries is exported by the code."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from prognos.core import jobmetrics
from prognos.core.settings import PROJECT_ROOT, Settings, load_settings
from serving_layer.metrics import ServingMetrics
from speed_layer.metrics import SpeedMetrics

pytestmark = pytest.mark.unit

INFRA = PROJECT_ROOT / "infra"
DEFAULTS = load_settings(state_dir=Path("/tmp/unused"))
IMAGE = "prognos:0.1.0"
ALIASES = {"KAFKA_BOOTSTRAP_SERVERS": "kafka_bootstrap_servers", "SPARK_MASTER": "spark_master"}
PROGNOS_SERVICES = ("topics", "spark-master", "spark-worker-1", "spark-worker-2", "airflow",
                    "speed", "serving")  # fmt: skip


def load_yaml(relative: str) -> list:
    return [doc for doc in yaml.safe_load_all((INFRA / relative).read_text()) if doc]


def setting_field(env_name: str) -> str:
    """The Settings field an environment variable sets (KeyError-free: asserts it exists)."""
    field = ALIASES.get(env_name) or env_name.removeprefix("PROGNOS_").lower()
    assert env_name in ALIASES or env_name.startswith("PROGNOS_"), env_name
    assert field in Settings.model_fields, f"{env_name} is not a prognos setting"
    return field


def assert_valid_settings(env: dict) -> Settings:
    """Every PROGNOS_* / alias variable names a setting and its value passes validation."""
    values = {
        setting_field(k): v for k, v in env.items() if k.startswith("PROGNOS_") or k in ALIASES
    }
    return load_settings(**values)


def kafka_version() -> str:
    pom = ET.parse(INFRA / "maven" / "kafka" / "pom.xml").getroot()
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    return pom.find("m:properties/m:kafka.version", namespace).text


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")
CLUSTER = load_settings(state_dir=Path("/tmp/unused"), kafka_cluster_size=len(KAFKA_NODES))


def assert_kraft_node_layout(envs: list[dict], hosts: list[str]) -> None:
    """Envs of KRaft nodes (apache/kafka image variables, host names unresolved): combined
    roles, ids 1..N, one cluster id, a static voter set naming every node's controller,
    each advertising itself, replication as prognos' cluster settings say."""
    assert [int(env["KAFKA_NODE_ID"]) for env in envs] == list(range(1, len(hosts) + 1))
    controller = DEFAULTS.kafka_controller_port
    voters = ",".join(f"{i}@{host}:{controller}" for i, host in enumerate(hosts, 1))
    _, _, broker_port = DEFAULTS.kafka_bootstrap_servers.rpartition(":")
    for env, host in zip(envs, hosts, strict=True):
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == voters
        assert f"CONTROLLER://:{controller}" in env["KAFKA_LISTENERS"]
        assert f"PLAINTEXT://:{broker_port}" in env["KAFKA_LISTENERS"]
        if "KAFKA_ADVERTISED_LISTENERS" in env:
            assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{host}:{broker_port}"
        for name in ("KAFKA_DEFAULT_REPLICATION_FACTOR", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                     "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):  # fmt: skip
            assert int(env[name]) == CLUSTER.topic_replication_factor == 3, name
        for name in ("KAFKA_MIN_INSYNC_REPLICAS", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
            assert int(env[name]) == CLUSTER.topic_min_insync_replicas == 2, name
        assert str(env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"]) == "false"
    (cluster_id,) = {env["CLUSTER_ID"] for env in envs}
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16  # a KRaft cluster id


def assert_cluster_settings(settings: Settings, brokers: list[str]) -> None:
    assert settings.kafka_bootstrap_servers.split(",") == brokers
    assert settings.kafka_cluster_size == len(brokers)
    assert (settings.topic_replication_factor, settings.topic_min_insync_replicas) == (3, 2)


# --- compose -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    (document,) = load_yaml("compose/compose.yaml")
    return document["services"]


def test_compose_has_every_part(compose):
    wanted = {*PROGNOS_SERVICES, *KAFKA_NODES, "pushgateway", "prometheus", "grafana"}
    assert wanted <= set(compose)
    dockerfile = INFRA / "docker" / "Dockerfile"
    assert dockerfile.exists() and "requirements.lock" in dockerfile.read_text()
    for name in PROGNOS_SERVICES:
        assert compose[name]["image"] == IMAGE, name
        assert compose[name]["build"]["dockerfile"] == "infra/docker/Dockerfile"


def test_compose_kafka_is_a_three_node_kraft_cluster_at_the_projects_version(compose):
    nodes = [compose[name] for name in KAFKA_NODES]
    assert {node["image"] for node in nodes} == {f"apache/kafka:{kafka_version()}"}
    assert [node["hostname"] for node in nodes] == list(KAFKA_NODES)
    assert_kraft_node_layout([node["environment"] for node in nodes], list(KAFKA_NODES))
    assert len({volume for node in nodes for volume in node["volumes"]}) == len(nodes)
    topics = compose["topics"]["depends_on"]
    assert {name: topics[name]["condition"] for name in KAFKA_NODES} == dict.fromkeys(
        KAFKA_NODES, "service_healthy"
    )


def test_compose_environment_names_settings_with_valid_values(compose):
    brokers = [compose[name]["environment"]["KAFKA_ADVERTISED_LISTENERS"] for name in KAFKA_NODES]
    brokers = [listener.removeprefix("PLAINTEXT://") for listener in brokers]
    for name in PROGNOS_SERVICES:
        settings = assert_valid_settings(compose[name]["environment"])
        assert_cluster_settings(settings, brokers)
        assert settings.spark_master == f"spark://spark-master:{DEFAULTS.spark_cluster_port}"
        assert settings.topic_readings_partitions > DEFAULTS.topic_readings_partitions


def test_compose_ports_equal_the_settings_defaults(compose):
    master = compose["spark-master"]["command"]
    assert option(master, "--port") == str(DEFAULTS.spark_cluster_port)
    assert option(master, "--webui-port") == str(DEFAULTS.spark_cluster_ui_port)
    for worker in ("spark-worker-1", "spark-worker-2"):
        command = compose[worker]["command"]
        assert option(command, "--cores") == str(DEFAULTS.spark_worker_cores)
        assert option(command, "--memory") == DEFAULTS.spark_worker_memory
    serving = assert_valid_settings(compose["serving"]["environment"])
    assert (serving.api_port, serving.grpc_port) == (DEFAULTS.api_port, DEFAULTS.grpc_port)
    speed = assert_valid_settings(compose["speed"]["environment"])
    assert speed.speed_metrics_port == DEFAULTS.speed_metrics_port
    airflow = assert_valid_settings(compose["airflow"]["environment"])
    assert airflow.airflow_port == DEFAULTS.airflow_port
    published = {
        name: [p.rsplit(":", 1)[1] for p in service.get("ports", [])]
        for name, service in compose.items()
    }
    assert published["serving"] == [str(DEFAULTS.api_port), str(DEFAULTS.grpc_port)]
    assert published["airflow"] == [str(DEFAULTS.airflow_port)]
    assert published["spark-master"] == [str(DEFAULTS.spark_cluster_ui_port)]
    for service in compose.values():  # published on the host's loopback only
        assert all(p.startswith("127.0.0.1:") for p in service.get("ports", []))


# --- Kubernetes --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict:
    docs = {}
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        if path.name != "airflow-values.yaml":
            for doc in load_yaml(f"k8s/{path.name}"):
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def container_env(container: dict, k8s: dict) -> dict:
    env = {}
    for source in container.get("envFrom", []):
        env.update(k8s[("ConfigMap", source["configMapRef"]["name"])]["data"])
    env.update({item["name"]: item["value"] for item in container.get("env", [])})
    return env


def test_k8s_serving_deployment_service_and_hpa(k8s):
    deployment = k8s[("Deployment", "prognos-serving")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == IMAGE
    settings = assert_valid_settings(container_env(container, k8s))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": DEFAULTS.api_port, "grpc": DEFAULTS.grpc_port}
    assert (settings.api_port, settings.grpc_port) == (DEFAULTS.api_port, DEFAULTS.grpc_port)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    service = k8s[("Service", "prognos-serving")]
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert {p["port"] for p in service["spec"]["ports"]} == set(ports.values())
    hpa = k8s[("HorizontalPodAutoscaler", "prognos-serving")]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "prognos-serving")
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_k8s_speed_layer_is_spark_submit_to_kubernetes(k8s):
    job = k8s[("Job", "prognos-speed-layer")]
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    command = container["command"]
    assert command[0] == "spark-submit"
    assert option(command, "--master").startswith("k8s://")
    assert command[-1] == "local:///opt/prognos/speed_layer/stream.py"
    assert (PROJECT_ROOT / "speed_layer" / "stream.py").exists()
    confs = dict(c.split("=", 1) for c in command if "=" in c and c.startswith("spark."))
    assert confs["spark.kubernetes.container.image"] == container["image"] == IMAGE
    account = confs["spark.kubernetes.authenticate.driver.serviceAccountName"]
    assert spec["serviceAccountName"] == account and ("ServiceAccount", account) in k8s
    settings = assert_valid_settings(container_env(container, k8s))
    assert settings.spark_master == option(command, "--master")
    metrics = k8s[("Service", "prognos-speed-metrics")]
    assert metrics["spec"]["ports"][0]["port"] == DEFAULTS.speed_metrics_port


def test_k8s_kafka_is_a_three_node_kraft_statefulset_the_settings_name(k8s):
    service = k8s[("Service", "prognos-kafka")]
    assert service["spec"]["clusterIP"] == "None"  # headless: a stable name per pod
    statefulset = k8s[("StatefulSet", "prognos-kafka")]
    spec = statefulset["spec"]
    assert spec["serviceName"] == "prognos-kafka" and spec["replicas"] == 3
    hosts = [f"prognos-kafka-{ordinal}.prognos-kafka" for ordinal in range(spec["replicas"])]
    (container,) = spec["template"]["spec"]["containers"]
    assert container["image"] == f"apache/kafka:{kafka_version()}"
    env = {item["name"]: item["value"] for item in container["env"]}
    script = container["command"][-1]  # the node id and listener come from the pod name
    assert "KAFKA_NODE_ID=$(( ${HOSTNAME##*-} + 1 ))" in script
    assert "PLAINTEXT://${HOSTNAME}.prognos-kafka:9092" in script
    envs = [{**env, "KAFKA_NODE_ID": str(node_id)} for node_id in range(1, len(hosts) + 1)]
    assert_kraft_node_layout(envs, hosts)
    budget = k8s[("PodDisruptionBudget", "prognos-kafka")]["spec"]
    assert budget["maxUnavailable"] == CLUSTER.topic_replication_factor - (
        CLUSTER.topic_min_insync_replicas
    )
    configmap = k8s[("ConfigMap", "prognos-settings")]["data"]
    assert_cluster_settings(assert_valid_settings(configmap), [f"{h}:9092" for h in hosts])


def test_k8s_speed_driver_gets_the_cluster_settings_and_tasks_match_partitions(k8s):
    (container,) = k8s[("Job", "prognos-speed-layer")]["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    confs = dict(c.split("=", 1) for c in command if "=" in c and c.startswith("spark."))
    prefix = "spark.kubernetes.driverEnv."
    driver_env = {k.removeprefix(prefix): v for k, v in confs.items() if k.startswith(prefix)}
    submit_env = container_env(container, k8s)
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "PROGNOS_KAFKA_CLUSTER_SIZE",
                 "PROGNOS_SPEED_STATE_PARTITIONS", "PROGNOS_STATE_DIR"):  # fmt: skip
        assert driver_env[name] == submit_env[name], name
    driver = assert_valid_settings(driver_env)
    tasks = int(confs["spark.executor.instances"]) * int(confs["spark.executor.cores"])
    settings = assert_valid_settings(submit_env)
    assert tasks == settings.topic_readings_partitions == driver.speed_state_partitions


def test_airflow_helm_values_use_the_prognos_image_and_settings():
    (values,) = load_yaml("k8s/airflow-values.yaml")
    assert f"{values['images']['airflow']['repository']}:{values['images']['airflow']['tag']}" == (
        IMAGE
    )
    env = {item["name"]: item["value"] for item in values["env"]}
    settings = assert_valid_settings(env)
    assert values["ports"]["apiServer"] == settings.airflow_port == DEFAULTS.airflow_port
    connection = json.loads(env["AIRFLOW_CONN_PROGNOS_SPARK"])
    assert connection["host"] == settings.spark_master


# --- Prometheus and Grafana --------------------------------------------------------------


def test_prometheus_scrapes_the_ports_the_settings_name(compose):
    (config,) = load_yaml("prometheus/prometheus.yml")
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert targets["prognos-serving"] == [f"serving:{DEFAULTS.api_port}"]
    assert targets["prognos-speed"] == [f"speed:{DEFAULTS.speed_metrics_port}"]
    pushgateway = assert_valid_settings(compose["serving"]["environment"]).pushgateway_url
    assert targets["prognos-jobs"] == [pushgateway]


def exported_metric_names() -> set[str]:
    """Sample names the code's registries export (from their metric families' types)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    job = jobmetrics.registry_of("any", {"t": 1}, {"t": 2}, {"rows": 3}, 0.0)
    names = set()
    for registry in (SpeedMetrics().registry, ServingMetrics().registry, job):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


PROMQL_WORDS = {
    "sum", "rate", "increase", "histogram_quantile", "time", "max", "min", "avg", "by",
    "without", "on", "ignoring", "and", "or", "unless", "count", "topk", "irate", "delta",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers, strings,
    range selectors and grouping clauses that are not functions or keywords."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {word for word in words if word not in PROMQL_WORDS}


def test_dashboard_queries_only_metrics_the_code_exports():
    dashboard = json.loads((INFRA / "grafana" / "dashboards" / "prognos.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in promql_metric_names(target["expr"])
    }
    assert len(queried) >= 10
    missing = queried - exported_metric_names()
    assert not missing, f"dashboard queries metrics no code exports: {sorted(missing)}"
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("ingest", "lag", "freshness", "quarantine", "late", "alert", "model", "latency"):
        assert topic in titles, topic


def test_metric_name_extraction_sees_through_promql():
    expr = 'histogram_quantile(0.99, sum by (le, route) (rate(x_bucket{route="a"}[5m]))) - y'
    assert promql_metric_names(expr) == {"x_bucket", "y"}


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard(compose):
    (datasources,) = load_yaml("grafana/provisioning/datasources/prometheus.yaml")
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    dashboard = json.loads((INFRA / "grafana" / "dashboards" / "prognos.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}
    mounts = compose["grafana"]["volumes"]
    assert "../grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts


def test_job_metrics_textfile_holds_the_lineage_versions(tmp_path):
    settings = load_settings(state_dir=tmp_path)
    path = jobmetrics.publish(
        "silver", {"bronze": 4}, {"silver": 7, "quarantine": None}, {"invalid": 2}, settings
    )
    text = path.read_text()
    assert 'prognos_job_table_version{direction="input",job="silver",table="bronze"} 4.0' in text
    assert 'prognos_job_table_version{direction="output",job="silver",table="silver"} 7.0' in text
    assert 'prognos_job_rows{job="silver",kind="invalid"} 2.0' in text
    assert "quarantine" not in text
