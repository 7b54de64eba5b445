#!/usr/bin/env bash
# grpcurl-style proof (issue #6): `buf curl` against the gateway's native port
# using server reflection only (no proto files), over --protocol grpc and
# --protocol grpcweb. For each protocol it lists the services, registers a
# fresh user, logs in, then calls CreateTask and ListTasks with an
# Authorization header, and checks a call without the header is refused.
#
#   TASKGATE_GATEWAY_ADDR=127.0.0.1:8080 clients/bufcurl/run.sh
#
# Environment:
#   TASKGATE_GATEWAY_ADDR  host:port of the gateway (plaintext; required)
#   BUF                    the buf binary (default: clients/web/node_modules/.bin/buf
#                          from `npm ci` in clients/web, i.e. @bufbuild/buf from npm,
#                          else `buf` on PATH)
#   BUF_CURL_SCHEMA        only for trying this script against a server WITHOUT
#                          reflection: a --schema to use instead (e.g. proto). The
#                          proof itself never sets it.
#
# The calls, in grpcurl syntax for manual use (grpcurl is not packaged here):
#   grpcurl -plaintext $ADDR list
#   grpcurl -plaintext -d '{"username":"u1","password":"a long password"}' $ADDR taskgate.auth.v1.AuthService/Register
#   grpcurl -plaintext -d '{"login":"u1","password":"a long password"}' $ADDR taskgate.auth.v1.AuthService/Login
#   grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{"task":{"title":"x"}}' $ADDR taskgate.task.v1.TaskService/CreateTask
#   grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{}' $ADDR taskgate.task.v1.TaskService/ListTasks
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
addr="${TASKGATE_GATEWAY_ADDR:?set TASKGATE_GATEWAY_ADDR, e.g. 127.0.0.1:8080}"
base="http://$addr"
if [[ -n "${BUF:-}" ]]; then
  buf="$BUF"
elif [[ -x "$here/../web/node_modules/.bin/buf" ]]; then
  buf="$here/../web/node_modules/.bin/buf"
else
  buf="buf"
fi

schema_args=()
if [[ -n "${BUF_CURL_SCHEMA:-}" ]]; then
  schema_args=(--reflect=false --schema "$BUF_CURL_SCHEMA")
fi

log() { echo "buf curl: $*"; }
fail() {
  echo "buf curl: FAILED: $*" >&2
  exit 1
}

# Runs one `buf curl` with the given protocol; stdout is the JSON response.
# buf curl exits with (gRPC code << 3) when the RPC fails, so that is kept.
bcurl() {
  local protocol="$1"
  shift
  timeout 30 "$buf" curl --protocol "$protocol" --http2-prior-knowledge --connect-timeout 10 \
    ${schema_args[@]+"${schema_args[@]}"} "$@"
}

# Reads a field path (a.b.c) from the JSON on stdin; empty when absent.
json_get() {
  python3 -c '
import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1].split("."):
    value = value.get(key) if isinstance(value, dict) else None
print("" if value is None else value)
' "$1"
}

log "using $("$buf" --version 2>&1) at $buf against $base"

for protocol in grpc grpcweb; do
  log "[$protocol] --list-services"
  services="$(bcurl "$protocol" "$base" --list-services)" || fail "[$protocol] listing services"
  echo "$services" | sed 's/^/  /'
  for svc in taskgate.auth.v1.AuthService taskgate.task.v1.TaskService; do
    grep -qx "$svc" <<<"$services" || fail "[$protocol] $svc is not listed"
  done

  suffix="$(python3 -c 'import uuid; print(uuid.uuid4().hex[:16])')"
  user="curl-$protocol-$suffix"
  password="curl-secret-$suffix"

  log "[$protocol] Register $user"
  out="$(bcurl "$protocol" -d "{\"username\":\"$user\",\"password\":\"$password\"}" \
    "$base/taskgate.auth.v1.AuthService/Register")" || fail "[$protocol] Register: $out"
  [[ "$(json_get user.username <<<"$out")" == "$user" ]] || fail "[$protocol] Register answered $out"

  log "[$protocol] Login"
  out="$(bcurl "$protocol" -d "{\"login\":\"$user\",\"password\":\"$password\"}" \
    "$base/taskgate.auth.v1.AuthService/Login")" || fail "[$protocol] Login: $out"
  token="$(json_get tokens.accessToken <<<"$out")"
  [[ -n "$token" ]] || fail "[$protocol] Login answered no access token: $out"

  title="buf curl over $protocol $suffix"
  log "[$protocol] CreateTask"
  out="$(bcurl "$protocol" -H "Authorization: Bearer $token" -d "{\"task\":{\"title\":\"$title\"}}" \
    "$base/taskgate.task.v1.TaskService/CreateTask")" || fail "[$protocol] CreateTask: $out"
  task_id="$(json_get task.id <<<"$out")"
  [[ -n "$task_id" && "$(json_get task.title <<<"$out")" == "$title" ]] || fail "[$protocol] CreateTask answered $out"

  log "[$protocol] ListTasks"
  out="$(bcurl "$protocol" -H "Authorization: Bearer $token" -d '{}' \
    "$base/taskgate.task.v1.TaskService/ListTasks")" || fail "[$protocol] ListTasks: $out"
  ids="$(python3 -c 'import json,sys; print("\n".join(t.get("id","") for t in json.load(sys.stdin).get("tasks",[])))' <<<"$out")"
  [[ "$ids" == "$task_id" ]] || fail "[$protocol] ListTasks should hold exactly the new task $task_id, answered $out"

  log "[$protocol] ListTasks without a token is refused"
  rc=0
  out="$(bcurl "$protocol" -d '{}' "$base/taskgate.task.v1.TaskService/ListTasks" 2>&1)" || rc=$?
  # UNAUTHENTICATED is gRPC code 16; buf curl exits with 16 << 3.
  [[ $rc -eq $((16 << 3)) ]] || fail "[$protocol] expected UNAUTHENTICATED (exit 128), got exit $rc: $out"
done

log "passed over grpc and grpcweb"
