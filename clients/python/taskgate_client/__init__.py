"""A small Python client for taskgate over the gateway's native gRPC port.

Layout:
- ``generate``: builds the gRPC stubs from proto/ into ``gen/`` (not committed).
- ``stubs``: puts ``gen/`` on the import path and re-exports the generated modules.
- ``client``: ``TaskgateClient``, a thin wrapper that keeps the tokens and sends
  ``authorization: Bearer ...`` metadata.

``from taskgate_client import TaskgateClient`` needs the stubs to have been
generated first (``python -m taskgate_client.generate``); importing
``taskgate_client.generate`` itself never does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TaskgateClient"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `python -m taskgate_client.generate` works before the stubs exist.
    if name in __all__:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
