"""`prognos serve` (HTTPS + gRPC) and `prognos query` as a user runs them: subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serving_support import (
    KEYS,
    free_port,
    key_settings,
    lake_settings,
    seed_lake,
    tiny_registry,
)

from prognos.core.settings import settings_env

PROGNOS = [sys.executable, "-m", "prognos.cli.main"]


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def wait_healthy(url: str, cert: Path, process: subprocess.Popen, timeout_s=90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prognos serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", verify=str(cert), timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError("prognos serve did not become healthy")


@pytest.fixture(scope="module")
def served_cli(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-cli")
    cert, key = self_signed_cert(tmp)
    settings = lake_settings(
        tmp,
        api_keys=key_settings(),
        api_port=free_port(),
        grpc_port=free_port(),
        api_tls_cert=cert,
        api_tls_key=key,
    )
    seed_lake(settings)
    tiny_registry(settings.registry)
    env = {**os.environ, **settings_env(settings), "PROGNOS_API_KEY": KEYS["reader"]}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    log = (tmp / "serve.log").open("w")
    process = subprocess.Popen([*PROGNOS, "serve"], env=env, stdout=log, stderr=log)
    try:
        wait_healthy(f"https://127.0.0.1:{settings.api_port}", cert, process)
        yield env, settings
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def run(env, *args):
    return subprocess.run([*PROGNOS, *args], env=env, capture_output=True, text=True, timeout=120)


def test_serve_speaks_https_only_with_the_certificate(served_cli):
    _, settings = served_cli
    url = f"https://127.0.0.1:{settings.api_port}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=5)  # self-signed: rejected without the cert
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{settings.api_port}/healthz", timeout=5)


def test_query_fleet_and_machine(served_cli):
    env, _ = served_cli
    fleet = run(env, "query", "fleet", "--json")
    assert fleet.returncode == 0, fleet.stderr
    assert [m["machine_id"] for m in json.loads(fleet.stdout)] == ["FD001-test-0001", "m3", "m2"]
    red = run(env, "query", "fleet", "--alert-level", "red")
    assert red.returncode == 0 and "FD001-test-0001" in red.stdout and "m2" not in red.stdout
    machine = run(env, "query", "machine", "m3")
    assert machine.returncode == 0 and "speed" in machine.stdout and "run-1" in machine.stdout
    as_json = run(env, "query", "machine", "m3", "--json")
    assert as_json.returncode == 0, as_json.stderr
    state = json.loads(as_json.stdout)
    assert (state["machine_id"], state["source"], state["readings_count"]) == ("m3", "speed", 12)


def test_query_errors_are_one_clear_line(served_cli):
    env, _ = served_cli
    missing = run(env, "query", "machine", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == "error: HTTP 404: unknown machine 'nope'"
    no_key = run({**env, "PROGNOS_API_KEY": ""}, "query", "fleet")
    assert no_key.returncode == 1 and "HTTP 401: missing API key" in no_key.stderr
    bad_level = run(env, "query", "fleet", "--alert-level", "purple")
    assert bad_level.returncode == 2 and "purple" in bad_level.stderr
