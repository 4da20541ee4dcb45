"""The reference store controller (docs/controller.md): a TLS server for every gate of a store and
the SQLite system of record behind it. A store's own controller can replace it by speaking
docs/protocols/controller.md."""
from palmnode.controller.command import DESCRIPTION, add_arguments, main
from palmnode.controller.server import (
                                        Controller,
                                        ControllerConfig,
                                        ControllerError,
                                        ControllerStats,
                                        NodeUnavailable,
                                        RequestFailed,
                                        RequestTimeout,
)
from palmnode.controller.store import Store, StoreError

__all__ = ["DESCRIPTION", "Controller", "ControllerConfig", "ControllerError", "ControllerStats",
           "NodeUnavailable", "RequestFailed", "RequestTimeout", "Store", "StoreError", "add_arguments", "main"]
