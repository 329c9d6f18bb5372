#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with mechakit and everything its tests need.
# Safe to run again; does only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Server binaries the conformance suite starts on free ports (Debian packages). Without
# them the backend's tests are skipped with the reason printed, so this is best effort.
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)  # joins the local Redis Cluster
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need_apt+=(postgresql)
fi
# Brokers: Debian installs some under /usr/sbin, which a non-root PATH may lack.
has() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/lib/rabbitmq/bin/$1" ]; }
has nats-server || need_apt+=(nats-server)
has rabbitmq-server || need_apt+=(rabbitmq-server)
has mosquitto || need_apt+=(mosquitto)
if [ ${#need_apt[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "setup: installing ${need_apt[*]} with apt-get"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null) \
    || echo "setup: apt-get could not install ${need_apt[*]}; their conformance tests will be skipped"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.mechakit-installed
# Reinstall when the project's dependency list changed, or when something '.[dev]' brings is
# missing: a plain 'pip install -e .' installs only the light core, without the sidecar extra.
want=$( { sha256sum pyproject.toml examples/third-party-component/pyproject.toml 2>/dev/null || true; } \
  | sha256sum | cut -c1-16)
installed() {
  .venv/bin/python - >/dev/null 2>&1 <<'EOF'
import importlib.util, sys
modules = ("mechakit", "grpc", "uvicorn", "starlette", "httpx", "dapr", "pytest", "hypothesis")
sys.exit(any(importlib.util.find_spec(name) is None for name in modules))
EOF
}
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! installed; then
  echo "setup: installing mechakit and test dependencies into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
  echo "$want" > "$stamp"
fi
