"""The node's diagnostics REPL: a unix-socket server inside the node and the ``palmnode repl`` client.

- :mod:`palmnode.repl.protocol` — the JSON-lines protocol, sans-IO (docs/protocols/repl.md)
- :mod:`palmnode.repl.commands` — the commands and :class:`ReplTarget`, what a node must provide
- :mod:`palmnode.repl.server` — :func:`serve_repl` (its config: ``palmnode.config.ReplConfig``)
- :mod:`palmnode.repl.client` — ``palmnode repl`` (``add_arguments`` / ``main``)
- :mod:`palmnode.repl.console` — the opt-in Python console (``py``)

The server side is imported on first use, so that the client starts without the node's imports.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {"ReplSocketError": "server", "serve_repl": "server",
            "ReplTarget": "commands"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"palmnode.repl.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'palmnode.repl' has no attribute {name!r}")


__all__ = ["ReplSocketError", "ReplTarget", "serve_repl"]
