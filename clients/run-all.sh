#!/usr/bin/env bash
# Runs every client proof of issue #6 against a running gateway, installing
# what each needs (pip, npm, apt), and stops at the first failure:
#
#   1. python       generated grpcio stubs: register, login, refresh, task CRUD, logout
#   2. bufcurl      `buf curl` with server reflection, over grpc and grpcweb
#   3. manual       every command the READMEs show (curl, grpcurl, buf curl), as written
#   4. browser      the /demo page in headless Chromium (playwright-core)
#   5. schemathesis REST fuzzing of /openapi.json, logged in
#
#   TASKGATE_GATEWAY_ADDR=127.0.0.1:8080 clients/run-all.sh
#
# Environment:
#   TASKGATE_GATEWAY_ADDR     host:port of the gateway, which serves native gRPC,
#                             gRPC-web and REST on that one port (required)
#   TASKGATE_GATEWAY_URL      its base URL for the browser and REST stages
#                             (default http://$TASKGATE_GATEWAY_ADDR)
#   TASKGATE_CLIENTS_SKIP     comma-separated stages to leave out, e.g. "schemathesis";
#                             each is reported as SKIPPED, never silently
#   TASKGATE_DEMO_SCREENSHOT  where the browser stage saves its screenshot
#                             (default /tmp/taskgate-demo.png)
#   PYTHON                    the Python that makes the venvs (default python3)
#
# The cargo xtask test command calls this after starting the stack.
set -euo pipefail

clients="$(cd "$(dirname "$0")" && pwd)"
export TASKGATE_GATEWAY_ADDR="${TASKGATE_GATEWAY_ADDR:?set TASKGATE_GATEWAY_ADDR, e.g. 127.0.0.1:8080}"
export TASKGATE_GATEWAY_URL="${TASKGATE_GATEWAY_URL:-http://$TASKGATE_GATEWAY_ADDR}"
export TASKGATE_DEMO_SCREENSHOT="${TASKGATE_DEMO_SCREENSHOT:-/tmp/taskgate-demo.png}"
python="${PYTHON:-python3}"
skip=",${TASKGATE_CLIENTS_SKIP:-},"

results=()

# Runs one stage in a subshell, timing it and recording its result.
stage() {
  local name="$1"
  shift
  if [[ "$skip" == *",$name,"* ]]; then
    echo "==> $name: SKIPPED (TASKGATE_CLIENTS_SKIP)"
    results+=("$name SKIPPED")
    return
  fi
  echo "==> $name"
  local start=$SECONDS rc=0
  ("$@") || rc=$?
  local took=$((SECONDS - start))
  if [[ $rc -ne 0 ]]; then
    echo "==> $name: FAILED (exit $rc, ${took}s)"
    results+=("$name FAILED")
    summary
    exit 1
  fi
  echo "==> $name: PASSED (${took}s)"
  results+=("$name PASSED (${took}s)")
}

summary() {
  echo
  echo "client proofs against $TASKGATE_GATEWAY_ADDR:"
  for r in "${results[@]}"; do echo "  $r"; done
}

# Installs the web client's pinned npm packages (playwright-core, @bufbuild/buf)
# once per run; both the bufcurl and browser stages use them. Stages run in
# subshells, so "once" is remembered in a file named after this shell's pid.
npm_marker="${TMPDIR:-/tmp}/taskgate-run-all-npm-ci.$$"
trap 'rm -f "$npm_marker"' EXIT
web_deps() {
  [[ -e "$npm_marker" ]] && return
  (cd "$clients/web" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$npm_marker"
}

python_stage() {
  cd "$clients/python"
  if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
  fi
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  PYTHON=.venv/bin/python ./generate.sh
  # -p no:cacheprovider keeps the tree clean; -rs would show a skip, which
  # cannot happen here because TASKGATE_GATEWAY_ADDR is set.
  .venv/bin/python -m pytest -v -rs -p no:cacheprovider tests
}

bufcurl_stage() {
  web_deps
  "$clients/bufcurl/run.sh"
}

manual_stage() {
  web_deps
  PYTHON="$python" "$clients/manual/run.sh"
}

browser_stage() {
  if [[ ! -x /usr/bin/chromium && -z "${CHROMIUM:-}" ]]; then
    echo "installing Debian's chromium (Playwright cannot download browsers here)"
    if [[ $(id -u) -ne 0 ]]; then
      echo "not root: install chromium first (apt-get install -y chromium)" >&2
      return 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  web_deps
  cd "$clients/web"
  node e2e/run.mjs
  echo "screenshot: $TASKGATE_DEMO_SCREENSHOT"
}

schemathesis_stage() {
  PYTHON="$python" "$clients/schemathesis/run.sh"
}

stage python python_stage
stage bufcurl bufcurl_stage
stage manual manual_stage
stage browser browser_stage
stage schemathesis schemathesis_stage
summary
