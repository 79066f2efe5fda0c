#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: Java 17 and Maven, the virtualenv from the lock
# (compiled bytecode, no resolution), the project installed editable, the JVM jars from
# Maven Central, Spark defaults for plain spark-submit, and the vendored data checked.
# Each step is skipped when its stamp is newer than its inputs, so a second run is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE=${PROGNOS_STATE_DIR:-$ROOT/.state}
JARS=${PROGNOS_JARS_DIR:-$STATE/jars}
VENV=$ROOT/.venv
PY=${PYTHON:-python3}
UV_VERSION=0.13.8
mkdir -p "$STATE/stamps"

say() { printf '[setup] %s\n' "$*"; }
fresh() { # fresh STAMP INPUT... : true when STAMP exists and is newer than every input
  local stamp=$STATE/stamps/$1; shift
  [ -f "$stamp" ] || return 1
  for input in "$@"; do [ "$input" -nt "$stamp" ] && return 1; done
  return 0
}
stamp() { touch "$STATE/stamps/$1"; }

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    say "missing $*: install it (Java 17 JDK and Maven), or run make setup as root"; exit 1
  fi
  say "installing $* with apt"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

check_java() {
  local version
  version=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1 || true)
  if [ -z "$version" ] || [ "$version" -lt 17 ]; then apt_install openjdk-17-jdk-headless; fi
  command -v mvn >/dev/null || apt_install maven
}

check_chromium() { # headless browser for the dashboard test (Debian's chromium)
  command -v chromium >/dev/null && return
  if [ "$(id -u)" != 0 ]; then say "missing chromium (dashboard test): apt-get install chromium"; return; fi
  say "installing chromium with apt"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}

setup_venv() {
  if fresh venv requirements.lock pyproject.toml && [ -x "$VENV/bin/python" ]; then return; fi
  "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || { say "Python 3.11 is required (set PYTHON=...)"; exit 1; }
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  [ -x "$STATE/uv/bin/uv" ] || { "$PY" -m venv "$STATE/uv" && "$STATE/uv/bin/pip" install -q "uv==$UV_VERSION"; }
  say "installing Python packages from requirements.lock"
  "$STATE/uv/bin/uv" pip sync --python "$VENV/bin/python" --compile-bytecode --require-hashes requirements.lock
  "$STATE/uv/bin/uv" pip install --python "$VENV/bin/python" --no-deps -e .
  stamp venv
}

setup_jars() {
  local name
  for name in spark kafka; do
    if fresh "jars-$name" "infra/maven/$name/pom.xml" && [ -d "$JARS/$name" ]; then continue; fi
    say "resolving $name jars with Maven"
    rm -rf "$JARS/$name"
    mvn -q -B -f "infra/maven/$name/pom.xml" dependency:copy-dependencies -DoutputDirectory="$JARS/$name"
    stamp "jars-$name"
  done
}

setup_spark_defaults() {
  if fresh spark-defaults "$ROOT/prognos/core/spark.py" "$STATE/stamps/jars-spark" "$STATE/stamps/venv"; then return; fi
  "$VENV/bin/python" -m prognos.cli.main spark-defaults >/dev/null
  stamp spark-defaults
}

check_data() {
  if fresh data data/cmapss/SHA256SUMS; then return; fi
  (cd data/cmapss && sha256sum --quiet -c SHA256SUMS) || { say "data/cmapss is damaged"; exit 1; }
  stamp data
}

check_java
check_chromium
setup_venv
setup_jars
setup_spark_defaults
check_data
say "ready"
