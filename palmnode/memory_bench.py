"""The node's memory in its own process, for ``palmnode bench --suite node``.

As on a gate: ``palmnode run`` in a child process with a vault of ``enrolled`` people (random
templates: memory does not depend on what they encode), the controller link and the REPL; this
process plays the store around it (the reference controller, the virtual gate: its renderer's
memory is not the node's). After start-up (the gallery loaded from the vault) the node idles, then
people arrive, enrol through the controller (card + palm) and are deleted (controller and REPL)
for ``seconds``. Its RSS comes from /proc, the gallery's bytes from the REPL's ``gallery``.

Alone, for a long run (the trend every ``seconds / 20``):
``python -m palmnode.memory_bench --seconds 1200 --enrolled 0``.

Budget (docs/architecture.md): the node ≤ 150 MB plus the gallery, the gallery ≤ 1 KiB per palm.
Baseline, measured in the same run: ``bare_imports`` — a bare interpreter that imports what
``palmnode run`` imports and does nothing else.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

BUDGET_MB = 150
GALLERY_BUDGET_B_PER_PALM = 1024
NODE_ID = "bench-mem"
FIRST_PERSON_SEED = 10_000
FIRST_STRANGER_SEED = 60_000
#: the modules `palmnode run` imports before it starts the node (palmnode/cli.py, commands.py)
NODE_IMPORTS = "import palmnode.cli, palmnode.commands, palmnode.node"
#: traffic lasts this many times the node suite's --seconds (a minute at its default)
TRAFFIC_WINDOWS = 3


def status_kb(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS), RssAnon and RssFile of ``pid``, in KiB (/proc/PID/status)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def baseline_kb() -> dict[str, int]:
    """RSS of a bare interpreter with the node's imports (a child process)."""
    code = f"{NODE_IMPORTS}\nfrom palmnode.memory_bench import status_kb\nimport json\nprint(json.dumps(status_kb()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fill_vault(path: Path, key_file: Path, people: int, *, seed: int = 7, chunk: int = 2000) -> None:
    """``people`` people, one right palm of three random templates each, straight into a new vault."""
    from palmnode.biometrics.types import SURFACE_ROWS, VEIN_ROWS, ModalityCode, PalmTemplate
    from palmnode.vault import create_key_file
    from palmnode.vault.keys import load_keys
    from palmnode.vault.records import EnrolledPalm, Person
    from palmnode.vault.store import Vault

    rng = np.random.default_rng(seed)
    create_key_file(key_file)

    def template() -> PalmTemplate:
        codes = []
        for rows in (SURFACE_ROWS, VEIN_ROWS):
            planes = rng.integers(0, 1 << 32, (4, rows), dtype=np.uint32)
            planes[3] = 0xFFFFFFFF
            codes.append(ModalityCode.from_planes(planes))
        return PalmTemplate(*codes)

    vault = Vault.open(path, load_keys(key_file))
    try:
        for start in range(0, people, chunk):
            vault.upsert_people(
                Person(f"crowd-{i:07d}", None, None, (EnrolledPalm("right", [template() for _ in range(3)]),),
                       enrolled_at=0.0, origin_node="crowd")
                for i in range(start, min(people, start + chunk)))
    finally:
        vault.close()


class _Repl:
    """One session on the node's REPL socket (JSON lines, docs/repl.md)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.buf = stream, b""

    @classmethod
    async def open(cls, path: Path) -> _Repl:
        repl = cls(await trio.open_unix_socket(str(path)))
        await repl.line()  # hello
        return repl

    async def line(self) -> dict:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("the node closed the REPL session")
            self.buf += chunk
        one, self.buf = self.buf.split(b"\n", 1)
        return json.loads(one)

    async def send(self, cmd: str, *args: str) -> None:
        await self.stream.send_all(json.dumps({"cmd": cmd, "args": list(args)}).encode() + b"\n")

    async def call(self, cmd: str, *args: str) -> dict:
        await self.send(cmd, *args)
        while "ok" not in (reply := await self.line()):
            pass
        if not reply["ok"]:
            raise RuntimeError(f"REPL {cmd}: {reply.get('error')}")
        return reply.get("result") or {}


class _Events:
    """The node's gate events as the REPL's ``follow`` shows them (dicts), to each subscriber."""

    def __init__(self) -> None:
        self.subscribers: list[tuple[frozenset[str], trio.MemorySendChannel]] = []

    async def run(self, path: Path, task_status=trio.TASK_STATUS_IGNORED) -> None:
        repl = await _Repl.open(path)
        await repl.send("follow", "gate", "presence")
        task_status.started()
        while True:
            try:
                event = (await repl.line()).get("event")
            except (EOFError, trio.BrokenResourceError, OSError):
                return  # the node stopped
            for types, send in list(self.subscribers):
                if event is not None and event["type"] in types:
                    with contextlib.suppress(trio.WouldBlock):
                        send.send_nowait(event)

    @contextlib.contextmanager
    def subscribe(self, *types: str):
        send, receive = trio.open_memory_channel(64)
        entry = (frozenset(types), send)
        self.subscribers.append(entry)
        try:
            yield receive
        finally:
            self.subscribers.remove(entry)


async def _until(events, want, timeout: float) -> dict:
    with trio.fail_after(timeout):
        async for event in events:
            if want(event):
                return event
    raise EOFError("the node's events ended")


class _Traffic:
    """People at the gate: arrivals (30% strangers), enrolments through the controller, deletions."""

    def __init__(self, controller, gate, events: _Events, repl_path: Path) -> None:
        self.controller, self.gate, self.events, self.repl_path = controller, gate, events, repl_path
        self.rng = random.Random(1)
        self.enrolled: dict[int, str] = {}
        self.next_person = 0
        self.counts = {"arrivals": 0, "decisions": 0, "enrolled": 0, "enrol_failed": 0, "deleted": 0}

    async def enrol(self) -> None:
        from palmnode.demo import card_number
        from palmnode.sim import scenario as sc

        i, self.next_person = self.next_person, self.next_person + 1
        seed, answer, done = FIRST_PERSON_SEED + i, {}, trio.Event()

        async def ask() -> None:
            try:
                answer.update(await self.controller.request(NODE_ID, "enrol.begin", {
                    "phone": f"+4930555{i:05d}", "palms": ["right"], "card_required": True}, timeout=60.0))
            except Exception as exc:  # refused, timed out: counted
                answer["error"] = str(exc)
            done.set()

        with self.events.subscribe("EnrolProgress") as progress:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                with trio.move_on_after(40):
                    await _until(progress, lambda ev: ev["step"] == "card", 10.0)
                    nursery.start_soon(self.gate.apply, sc.Card(at=0, kind="emv", pan=card_number(i), seconds=0.8))
                    await _until(progress, lambda ev: ev["step"] == "palm", 10.0)
                    while not done.is_set():  # hover, lift, hover again: one capture per presentation
                        with trio.move_on_after(2.0):
                            await self.gate.hover(150.0, 1.2, approach_s=0.3, identity=seed, hand="right")
                        await trio.sleep(1.0)
                await done.wait()
        if "person_id" in answer:
            self.enrolled[seed] = answer["person_id"]
            self.counts["enrolled"] += 1
        else:
            self.counts["enrol_failed"] += 1
        await trio.sleep(0.5)

    async def delete(self, via_repl: bool) -> None:
        seed = self.rng.choice(sorted(self.enrolled))
        person_id = self.enrolled.pop(seed)
        with self.events.subscribe("PersonDeleted") as deleted:
            if via_repl:
                repl = await _Repl.open(self.repl_path)
                async with repl.stream:
                    await repl.call("delete", "id", person_id)
            else:
                await self.controller.delete_person(person_id=person_id)
            with trio.move_on_after(10):
                await deleted.receive()
                self.counts["deleted"] += 1

    async def arrive(self) -> None:
        people = sorted(self.enrolled)
        stranger = not people or self.rng.random() < 0.3
        seed = FIRST_STRANGER_SEED + self.rng.randrange(100_000) if stranger else self.rng.choice(people)
        self.counts["arrivals"] += 1
        with self.events.subscribe("Decision") as decisions:
            async with trio.open_nursery() as hovering:
                hovering.start_soon(lambda: self.gate.hover(150.0, 1.5, approach_s=0.3, identity=seed, session=2,
                                                            hand="right"))
                with trio.move_on_after(4.0):
                    await decisions.receive()
                    self.counts["decisions"] += 1
        await trio.sleep(0.6)

    async def play(self, seconds: float) -> None:
        end = trio.current_time() + seconds
        cycle = 0
        while trio.current_time() < end:
            cycle += 1
            for _ in range(4):
                await self.arrive()
            await self.enrol()
            if len(self.enrolled) > 3:
                await self.delete(via_repl=cycle % 2 == 0)


def _node_toml(folder: Path, endpoints, controller_port: int, certs: Path) -> Path:
    from palmnode.bench import node_toml

    return node_toml(folder, NODE_ID, endpoints, f"""[gate]
search_threads = 1
[vault]
path = "{folder}/vault.db"
key_file = "{folder}/vault.key"
[controller]
host = "127.0.0.1"
port = {controller_port}
ca = "{certs}/ca.pem"
cert = "{certs}/{NODE_ID}.pem"
key = "{certs}/{NODE_ID}.key"
[repl]
socket_path = "{folder}/repl.sock"
""")


async def _measure(folder: Path, seconds: float, idle_s: float) -> dict:
    from palmnode.controller.server import Controller, ControllerConfig
    from palmnode.link.certs import make_dev_pki
    from palmnode.sim.gate import VirtualGate
    from palmnode.vault import create_key_file

    certs = folder / "certs"
    await trio.to_thread.run_sync(lambda: make_dev_pki(certs, nodes=[NODE_ID]))
    create_key_file(folder / "controller.key")
    controller = Controller(ControllerConfig.from_certs_dir(
        certs, db_path=str(folder / "controller.db"), key_file=str(folder / "controller.key"), port=0))
    gate = VirtualGate(folder / "sim", camera_port=0, seed=3)
    events = _Events()
    result: dict = {}
    async with trio.open_nursery() as store:
        port = await store.start(controller.run)
        endpoints = await store.start(gate.run)
        config = _node_toml(folder, endpoints, port, certs)
        started = time.monotonic()
        proc = await trio.lowlevel.open_process([sys.executable, "-m", "palmnode.cli", "run", "--config", str(config)],
                                                stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with trio.fail_after(600):  # a large vault's gallery loads first
                await controller.wait_node(NODE_ID)
            result["start_s"] = round(time.monotonic() - started, 1)
            await store.start(events.run, folder / "repl.sock")
            await trio.sleep(idle_s)
            result["idle"] = status_kb(proc.pid)
            traffic = _Traffic(controller, gate, events, folder / "repl.sock")
            peak, trend, every = 0, [], max(5, round(seconds / 20))

            async def watch() -> None:
                nonlocal peak
                for tick in itertools.count():
                    rss = status_kb(proc.pid)["VmRSS"]
                    peak = max(peak, rss)
                    if tick % every == 0:
                        trend.append(rss)
                    await trio.sleep(1.0)

            async with trio.open_nursery() as watching:
                watching.start_soon(watch)
                await traffic.play(seconds)
                await trio.sleep(idle_s)  # the last flows finish; idle again
                watching.cancel_scope.cancel()
            result["after"] = status_kb(proc.pid)
            result["traffic_peak_kb"], result["trend_kb"], result["trend_every_s"] = peak, trend, every
            result["counts"] = traffic.counts
            repl = await _Repl.open(folder / "repl.sock")
            async with repl.stream:
                result["gallery"] = await repl.call("gallery")
        finally:
            proc.send_signal(signal.SIGINT)
            with trio.move_on_after(15, shield=True):  # its clean stop, also when a Ctrl-C or SIGTERM cancelled the bench
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
        store.cancel_scope.cancel()
    return result


def run(seconds: float, enrolled: int, *, idle_s: float = 5.0) -> dict:
    """The node with ``enrolled`` people in its vault: idle, then ``seconds`` of traffic."""
    base = baseline_kb()
    with tempfile.TemporaryDirectory(prefix="palmnode-bench-mem-") as tmp:
        folder = Path(tmp)
        print(f"node memory: a vault of {enrolled} people ...", file=sys.stderr, flush=True)
        fill_vault(folder / "vault.db", folder / "vault.key", enrolled)
        print(f"node memory: idle {idle_s:.0f} s, traffic {seconds:.0f} s ...", file=sys.stderr, flush=True)
        from palmnode import stopsignals

        got = stopsignals.run_trio(_measure, folder, seconds, idle_s)  # a Ctrl-C or SIGTERM stops the node
    gallery = got["gallery"]
    mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
    node_kb = got["after"]["VmRSS"] - gallery["memory_bytes"] / 1024
    return {
        "benchmark": "node_memory",
        "gallery_palms": gallery["palms"],
        "traffic_s": seconds,
        "traffic": got["counts"],
        "node_start_s": got["start_s"],
        "rss_mb": {"idle": mb(got["idle"]["VmRSS"]), "after_traffic": mb(got["after"]["VmRSS"]),
                   "peak": mb(max(got["after"]["VmHWM"], got["traffic_peak_kb"])),
                   "anon_after": mb(got["after"]["RssAnon"]), "file_after": mb(got["after"]["RssFile"])},
        "rss_trend_mb": {"every_s": got["trend_every_s"], "rss": [mb(kb) for kb in got["trend_kb"]]},
        "gallery_mb": round(gallery["memory_bytes"] / 2**20, 1),
        "gallery_bytes_per_palm": round(gallery["bytes_per_palm"]) if gallery["bytes_per_palm"] else None,
        "node_minus_gallery_mb": mb(node_kb),
        "baseline": "bare_imports",
        "baseline_rss_mb": mb(base["VmRSS"]),
        "node_minus_gallery_over_baseline_mb": mb(node_kb - base["VmRSS"]),
        "budget_mb": BUDGET_MB,
        "budget_gallery_bytes_per_palm": GALLERY_BUDGET_B_PER_PALM,
        "node_within_budget": node_kb * 1024 <= BUDGET_MB * 1e6,  # the budget is in MB, the RSS in MiB
        "gallery_within_budget": (gallery["bytes_per_palm"] or 0) <= GALLERY_BUDGET_B_PER_PALM,
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m palmnode.memory_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="traffic (default 60)")
    ap.add_argument("--enrolled", type=int, default=100_000, help="people in the vault (default 100000)")
    args = ap.parse_args()
    print(json.dumps(run(args.seconds, args.enrolled)))


if __name__ == "__main__":
    main()
