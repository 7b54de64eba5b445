"""The generated modules, importable once ``python -m taskgate_client.generate`` has run.

protoc writes modules whose imports follow the proto packages
(``from taskgate.auth.v1 import auth_pb2``, ``from google.api import
annotations_pb2``), so ``gen/`` itself must be on ``sys.path``. ``google`` is a
namespace package, which lets ``gen/google/api`` sit beside the installed
``google.protobuf``.
"""

from __future__ import annotations

import sys
from pathlib import Path

GEN_DIR = Path(__file__).resolve().parent / "gen"

if not (GEN_DIR / "taskgate" / "auth" / "v1" / "auth_pb2.py").is_file():
    raise ImportError(
        f"taskgate stubs are missing from {GEN_DIR}; generate them with `python -m taskgate_client.generate`"
    )
if str(GEN_DIR) not in sys.path:
    sys.path.insert(0, str(GEN_DIR))

from taskgate.auth.v1 import auth_pb2, auth_pb2_grpc  # noqa: E402
from taskgate.task.v1 import task_pb2, task_pb2_grpc  # noqa: E402

__all__ = ["auth_pb2", "auth_pb2_grpc", "task_pb2", "task_pb2_grpc"]
