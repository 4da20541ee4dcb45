"""Controllable child bodies for supervisor tests: they log starts/stops and crash on demand."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

import attrs
import trio

from palmnode.actors import ChildContext


class Boom(Exception):
    """The failure injected into children."""


@attrs.define(eq=False)
class Live:
    name: str
    trigger: trio.Event = attrs.field(factory=trio.Event)
    outcome: str = "crash"  # or "exit"


@attrs.define(eq=False)
class Harness:
    """Children made by ``body(name)`` record "start x"/"stop x" in ``log`` (with times in
    ``times``), exist at most once each in ``live``, and end on ``crash(name)``/``exit(name)``."""

    log: list[str] = attrs.field(factory=list)
    times: list[tuple[str, float]] = attrs.field(factory=list)
    live: dict[str, Live] = attrs.field(factory=dict)
    starts: Counter[str] = attrs.field(factory=Counter)
    duplicates: int = 0

    def _note(self, entry: str) -> None:
        self.log.append(entry)
        self.times.append((entry, trio.current_time()))

    def body(self, name: str, *, start_delay: float = 0.0, signals: bool = False,
             fail_runs: Collection[int] = (), crash_after: float | None = None):
        """A child body. ``fail_runs``: these runs (1-based) raise Boom before signalling started.
        ``crash_after``: every run crashes after that many seconds (unless stopped first)."""

        async def run(ctx: ChildContext) -> None:
            self.starts[name] += 1
            if self.starts[name] in fail_runs:
                self._note(f"failstart {name}")
                raise Boom(f"{name} cannot start")
            if name in self.live:
                self.duplicates += 1
            live = Live(name)
            self.live[name] = live
            self._note(f"start {name}")
            try:
                if start_delay:
                    await trio.sleep(start_delay)
                if signals:
                    ctx.started()
                if crash_after is not None:
                    with trio.move_on_after(crash_after):
                        await live.trigger.wait()
                    live.trigger.set()
                else:
                    await live.trigger.wait()
                if live.outcome == "crash":
                    raise Boom(f"{name} crashed\nsecond line")
            finally:
                self._note(f"stop {name}")
                if self.live.get(name) is live:
                    del self.live[name]

        return run

    def crash(self, name: str) -> None:
        self.live[name].outcome = "crash"
        self.live[name].trigger.set()

    def exit(self, name: str) -> None:
        self.live[name].outcome = "exit"
        self.live[name].trigger.set()

    def clear(self) -> None:
        self.log.clear()
        self.times.clear()

    def start_times(self, name: str) -> list[float]:
        return [t for entry, t in self.times if entry == f"start {name}"]
