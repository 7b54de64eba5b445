#!/usr/bin/env bash
# Regenerates the Python gRPC stubs from the repository's proto/ into
# taskgate_client/gen/ (ignored by git). Needs grpcio-tools, see requirements.txt.
#
#   clients/python/generate.sh            # uses `python3`, or $PYTHON if set
#
# It runs `python -m grpc_tools.protoc -I proto --python_out --grpc_python_out
# --pyi_out` over taskgate/{auth,task}/v1, google/api/{annotations,http,field_behavior}.proto
# buf/validate/validate.proto and taskgate/api/v1/policy.proto.
set -euo pipefail
cd "$(dirname "$0")"
exec "${PYTHON:-python3}" -m taskgate_client.generate "$@"
