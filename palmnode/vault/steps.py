"""Vault writes of a running node, waiting in short steps for another process's write lock.

Another process holding the vault's write lock (an ``sqlite3`` shell left in a transaction, a
backup, a script) makes a write wait. One wait of SQLite's whole busy timeout in a worker thread
cannot be cancelled (trio waits for the thread), so a stop (systemd's SIGTERM, Ctrl-C) meanwhile
came up to that timeout (5 s) late, and the vault's lock, held by the waiting thread, kept
every other vault call of the node (the gate's reads among them) waiting too. :func:`in_vault_steps`
runs a write that waits at most :data:`STEP_S` in SQLite (the vault methods' ``wait=``), again
while it meets the lock, up to the vault's busy timeout in all: a stop is served within a step, the vault
is free for others between steps, and a vault nobody holds sees one step, as before
(docs/vault.md, "Transactions and crash safety").
"""
from __future__ import annotations

from typing import Callable, TypeVar

import trio

from palmnode.vault.errors import VaultBusy

T = TypeVar("T")

#: how long the node's start waits in all for another process's write lock (the busy timeout the
#: node opens its vault with: its writes after the start wait as long, ``Vault.busy_timeout``)
BUSY_TIMEOUT_S = 5.0
#: how long one step waits in SQLite: a stop meanwhile is served within it
STEP_S = 0.1


async def in_vault_steps(step: Callable[[], T], timeout_s: float = BUSY_TIMEOUT_S,
                         on_wait: Callable[[], None] | None = None) -> T:
    """``step()`` in a worker thread, again while it raises VaultBusy, until ``timeout_s`` has
    passed (then that VaultBusy). ``step`` waits one short step in SQLite for another process
    holding the vault's write lock (a backup, an ``sqlite3`` shell: ``wait=STEP_S``), so a stop
    between steps ends the wait within one: one wait of the whole timeout in a worker thread could
    not be cancelled and held a stop up to 5 s. ``step`` must be safe to run again after a
    VaultBusy (it wrote nothing). ``on_wait`` is called once, when a step first finds the vault held."""
    deadline = trio.current_time() + timeout_s
    waited = False
    while True:
        try:
            return await trio.to_thread.run_sync(step)
        except VaultBusy:
            if trio.current_time() >= deadline:
                raise
            if on_wait is not None and not waited:
                on_wait()
            waited = True
        await trio.lowlevel.checkpoint()  # a stop asked during that step ends the wait here
