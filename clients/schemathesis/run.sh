#!/usr/bin/env bash
# Fuzzes the gateway's REST/JSON API with schemathesis (issue #6), from the
# OpenAPI document the gateway serves at /openapi.json, as a logged-in user.
#
#   TASKGATE_GATEWAY_URL=http://127.0.0.1:8080 clients/schemathesis/run.sh
#
# What it does:
#   1. installs schemathesis (pinned below) into clients/schemathesis/.venv
#      from PyPI, unless that venv already has that version;
#   2. registers a fresh user (uuid name) and logs in over REST
#      (POST /api/v1/auth/register, POST /api/v1/auth/login) to get a Bearer token;
#   3. runs `schemathesis run $URL/openapi.json` twice, each with its own token:
#      - every operation except the ones that end the session, so the token
#        stays good for the whole pass;
#      - then only the session-ending ones (logout, logout-all, revoke session).
#
# schemathesis flags used (see `schemathesis run --help`, version pinned below):
#   --header "Authorization: Bearer $TOKEN"   sent with every generated request
#   --checks not_a_server_error,response_schema_conformance
#                                             fail on any 5xx, and on any response
#                                             whose body breaks the schema documented
#                                             for its status code
#   --max-examples N     test cases per operation and phase (SCHEMATHESIS_MAX_EXAMPLES, default 15)
#   --max-time S         time budget of one pass; the two passes together stay
#                        under ~2 minutes (SCHEMATHESIS_MAX_TIME, default 60;
#                        the second pass gets a third of it)
#   --request-timeout 10 seconds for one request; a hang counts as a failure
#   --wait-for-schema 30 seconds to wait for /openapi.json to answer
#   --workers 1          one worker: with two, CPython 3.11's parser can crash
#                        ("AST constructor recursion depth mismatch", python/cpython#106905)
#   --seed N             reproducible data (SCHEMATHESIS_SEED, default 6)
#   --phases examples,fuzzing,stateful
#                        every phase but "coverage": in 4.32.5 that phase's own
#                        generator crashes with a KeyError inside schemathesis
#                        (specs/openapi/coverage/_schema.py, _negative_type) on
#                        our document, before any request is sent; it reports a
#                        runtime error, not a finding about the server
#   --generation-database none   no .hypothesis folder left behind
#   --exclude-path-regex / --include-path-regex   split the two passes
#   --report junit --report-dir DIR   a JUnit report per pass in
#                        $SCHEMATHESIS_REPORT_DIR (default /tmp/taskgate-schemathesis)
#   --no-color           plain logs in CI
# Extra flags for both passes can be given in SCHEMATHESIS_EXTRA_ARGS.
#
# Exits non-zero if schemathesis finds a failure or cannot run.
set -euo pipefail

SCHEMATHESIS_VERSION="4.32.5"

here="$(cd "$(dirname "$0")" && pwd)"
url="${TASKGATE_GATEWAY_URL:?set TASKGATE_GATEWAY_URL, e.g. http://127.0.0.1:8080}"
url="${url%/}"
venv="$(realpath -m "${SCHEMATHESIS_VENV:-$here/.venv}")"
python="${PYTHON:-python3}"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-15}"
max_time="${SCHEMATHESIS_MAX_TIME:-60}"
seed="${SCHEMATHESIS_SEED:-6}"
report_dir="$(realpath -m "${SCHEMATHESIS_REPORT_DIR:-/tmp/taskgate-schemathesis}")"

log() { echo "schemathesis: $*"; }

# 1. The tool, in its own venv so it cannot clash with the Python client's pins.
# openapi-spec-validator checks the served document against the OpenAPI 3.1 schema first.
OPENAPI_SPEC_VALIDATOR_VERSION=0.9.0
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION\$" ||
  ! "$venv/bin/python" -c 'import openapi_spec_validator' 2>/dev/null; then
  log "installing schemathesis==$SCHEMATHESIS_VERSION and openapi-spec-validator into $venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" \
    "openapi-spec-validator==$OPENAPI_SPEC_VALIDATOR_VERSION"
fi
"$venv/bin/schemathesis" --version

# 1b. The document the gateway serves is valid OpenAPI 3.1.
mkdir -p "$report_dir"
curl -fsS "$url/openapi.json" -o "$report_dir/openapi.json"
"$venv/bin/python" -m openapi_spec_validator "$report_dir/openapi.json"
log "served /openapi.json is valid OpenAPI 3.1"

# 2. A fresh user and a Bearer token, over the REST API itself.
fresh_token() {
  "$venv/bin/python" - "$url" <<'PY'
import json, sys, urllib.error, urllib.request, uuid

base = sys.argv[1]
suffix = uuid.uuid4().hex[:16]
creds = {"username": f"fuzz-{suffix}", "password": f"fuzz-secret-{suffix}"}

def post(path, body):
    req = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json", "accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as err:
        sys.exit(f"POST {path} answered {err.code}: {err.read().decode(errors='replace')[:500]}")

post("/api/v1/auth/register", creds)
tokens = post("/api/v1/auth/login", {"login": creds["username"], "password": creds["password"]})
# The login route answers the TokenPair itself (response_body: "tokens"); accept
# the wrapped form and either JSON field spelling too.
tokens = tokens.get("tokens", tokens)
token = tokens.get("access_token") or tokens.get("accessToken")
if not token:
    sys.exit(f"login answered no access token: {json.dumps(tokens)[:500]}")
print(token)
PY
}

# Operations that end the caller's session; fuzzing them first would leave the
# rest of the pass answering 401.
session_enders='/auth/(logout|logout-all|sessions/[^/]+)$'

run_pass() (
  local name="$1" budget="$2"
  shift 2
  local token
  token="$(fresh_token)"
  log "pass '$name' ($budget s at most)"
  # Run from the report folder: schemathesis keeps a .schemathesis/ cache in
  # the working directory, which must not land in the source tree.
  cd "$report_dir"
  # shellcheck disable=SC2086 # SCHEMATHESIS_EXTRA_ARGS is split on purpose
  "$venv/bin/schemathesis" run "$url/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,response_schema_conformance \
    --phases examples,fuzzing,stateful \
    --max-examples "$max_examples" \
    --max-time "$budget" \
    --request-timeout 10 \
    --wait-for-schema 30 \
    --workers 1 \
    --seed "$seed" \
    --generation-database none \
    --report junit --report-dir "$report_dir" --report-junit-path "$report_dir/$name.xml" \
    --no-color \
    ${SCHEMATHESIS_EXTRA_ARGS:-} \
    "$@"
)

mkdir -p "$report_dir"
run_pass main "$max_time" --exclude-path-regex "$session_enders"
run_pass session-enders "$(( max_time / 3 > 1 ? max_time / 3 : 1 ))" --include-path-regex "$session_enders"
log "passed: no 5xx and no response outside the documented schema"
