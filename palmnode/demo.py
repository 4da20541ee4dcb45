"""``palmnode demo``: a store in one process, no hardware, no network beyond loopback.

The reference store controller, a virtual gate and a node on it (configured exactly as on a real
gate: ports, a camera URL, a vault, the controller over mutual TLS with certificates made for the
run). The controller asks the gate to enrol synthetic people — each taps an EMV card on the
emulated reader and holds a right palm over the emulated camera — then a stream of arrivals
plays: enrolled people (hands from a later session), strangers, an unknown card, the camera
unplugged for a while. Every decision is shown live with its latency; a summary ends it.
"""
from __future__ import annotations

import collections
import random
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import attrs
import numpy as np
import trio

from drivers.card_reader.cardtoken import luhn_ok
from drivers.card_reader.reads import PaymentCardRead
from palmnode import config
from palmnode.actors import DeviceState, DeviceStateChanged, EventBus, GateState
from palmnode.biometrics.gallery import Gallery
from palmnode.controller.server import Controller, ControllerConfig
from palmnode.gate.events import Decision, EnrolProgress, Feedback, PaymentResult
from palmnode.gate.presence import PresenceChanged
from palmnode.link.certs import make_dev_pki
from palmnode.node import Node
from palmnode.sim import scenario as sc
from palmnode.sim.gate import Endpoints, VirtualGate
from palmnode.vault import create_key_file

NODE_ID = "demo-gate"
READY_TIMEOUT_S = 15.0
FIRST_PERSON_SEED = 10_000   # renderer seeds of the enrolled people
FIRST_STRANGER_SEED = 60_000  # and of people never enrolled


def node_config(endpoints: Endpoints, folder: Path, node_id: str = "demo-gate", *,
                controller_port: int | None = None, certs: Path | None = None,
                vault: bool = False) -> config.Config:
    """A node config for the given endpoints, the same shape as config/sim.toml; with ``vault``
    the working gate (vault, flows), with ``controller_port`` and ``certs`` the controller link."""
    raw: dict = {
        "node": {"node_id": node_id, "log_level": "warning"},
        "devices": {
            "proximity": {"port": endpoints.proximity},
            "card_reader": {"port": endpoints.card_reader, "token_key_file": str(folder / "card_token.key")},
            "illuminator": {"port": endpoints.illuminator},
            "camera": {"source": endpoints.camera},
        },
    }
    if vault:
        raw["vault"] = {"path": str(folder / f"{node_id}.vault.db"), "key_file": str(folder / f"{node_id}.vault.key")}
    if controller_port is not None and certs is not None:
        raw["controller"] = {"port": controller_port, "ca": str(certs / "ca.pem"),
                             "cert": str(certs / f"{node_id}.pem"), "key": str(certs / f"{node_id}.key")}
    return config.from_dict(raw, base=folder)


def card_number(i: int) -> str:
    """A valid test Visa number for person ``i`` (4000 00 prefix, Luhn check digit)."""
    body = f"400000{i:09d}"
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


@attrs.frozen
class Plan:
    people: int = 24
    arrivals: int = 40
    strangers: float = 0.25      # share of arrivals who were never enrolled
    unplug_camera: bool = True   # the camera is pulled for a few seconds mid-stream
    payment: bool = True         # the last quarter of the arrivals pay (the controller charges their card)
    seed: int = 0


class Summary:
    def __init__(self) -> None:
        self.enrolled: dict[int, str] = {}          # renderer seed -> person id
        self.enrol_s: list[float] = []              # palm prompt -> enrolled
        self.enrol_failed: list[str] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.latencies_ms: list[float] = []
        self.frame_waits_ms: list[float] = []       # a capture's wait for its two lit frames
        self.recoveries: list[tuple[str, float]] = []
        self.errors: list[str] = []
        self.controller_events: collections.Counter[str] = collections.Counter()
        self.health: tuple = ()                     # each device's health at the end

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None


class Demo:
    def __init__(self, plan: Plan, folder: Path, out: TextIO, *, gallery: Gallery | None = None) -> None:
        self.plan, self.folder, self.out, self.gallery = plan, folder, out, gallery
        self.summary = Summary()
        self.t0 = trio.current_time()
        self.lost_at: dict[str, float] = {}

    def say(self, text: str) -> None:
        print(f"{trio.current_time() - self.t0:7.2f}s  {text}", file=self.out, flush=True)

    async def run(self) -> Summary:
        certs = self.folder / "certs"
        await trio.to_thread.run_sync(lambda: make_dev_pki(certs, nodes=[NODE_ID]))
        create_key_file(self.folder / "controller.key")
        controller = Controller(ControllerConfig.from_certs_dir(
            certs, db_path=str(self.folder / "controller.db"), key_file=str(self.folder / "controller.key"), port=0))
        gate = VirtualGate(self.folder / "sim", camera_port=0, seed=self.plan.seed)
        async with trio.open_nursery() as store:
            port = await store.start(controller.run)
            endpoints = await store.start(gate.run)
            node = Node(node_config(endpoints, self.folder, NODE_ID, controller_port=port, certs=certs, vault=True),
                        gallery=self.gallery)
            async with trio.open_nursery() as nursery, node.bus.subscribe(buffer=4096) as events:
                nursery.start_soon(self._show, events)
                await nursery.start(node.run)
                with trio.fail_after(READY_TIMEOUT_S):
                    while node.health.gate is not GateState.READY:
                        await trio.sleep(0.05)
                    await controller.wait_node(NODE_ID)
                self.say(f"store controller on 127.0.0.1:{port} (mutual TLS), gate {NODE_ID} ready and connected")
                await self._enrol_all(controller, gate, node)
                await self._arrivals(controller, gate, node)
                await trio.sleep(1.0)  # the last events reach the controller
                self.summary.health = node.health.snapshot()
                nursery.cancel_scope.cancel()  # the node stops first: lights off, ports closed
            self.summary.controller_events.update(e.kind for e in controller.store.events())
            store.cancel_scope.cancel()
        return self.summary

    # ---- enrolment through the real flow, asked by the controller -------------------------------
    async def _enrol_all(self, controller: Controller, gate: VirtualGate, node: Node) -> None:
        self.say(f"enrolling {self.plan.people} people: the controller asks the gate, each taps a card "
                 "and holds a right palm over it")
        for i in range(self.plan.people):
            await self._enrol_one(i, controller, gate, node)

    async def _enrol_one(self, i: int, controller: Controller, gate: VirtualGate, node: Node) -> None:
        seed = FIRST_PERSON_SEED + i
        answer, took = await enrol_person(controller, NODE_ID, gate, node, seed, pan=card_number(i),
                                          phone=f"+4930555{i:05d}")
        if "person_id" in answer:
            self.summary.enrolled[seed] = answer["person_id"]
            self.summary.enrol_s.append(took)
            self.say(f"enrolled person {i + 1} as {answer['person_id'][:8]}… (card …{card_number(i)[-4:]}) "
                     f"in {took:.1f} s")
        else:
            self.summary.enrol_failed.append(answer.get("error", "no answer"))
            self.say(f"enrolment of person {i + 1} failed: {answer.get('error')}")
        await trio.sleep(0.4)  # the hand is gone before the next person steps up

    # ---- arrivals ---------------------------------------------------------------------------------
    async def _arrivals(self, controller: Controller, gate: VirtualGate, node: Node) -> None:
        rng = random.Random(self.plan.seed)
        people = list(self.summary.enrolled.items())
        n = self.plan.arrivals
        unplug_at = n // 2 if self.plan.unplug_camera else -1
        self.say(f"{n} arrivals: enrolled people (hands from a later session) and strangers")
        for k in range(n):
            if k == unplug_at:
                self.say("the camera is unplugged for 3 s")
                await gate.apply(sc.Unplug(at=0, device="camera", seconds=3.0))
                await trio.sleep(1.0)
            if k == n // 3:
                await self._unknown_card(gate, node)
            if k == (3 * n) // 4 and self.plan.payment:
                await controller.request(NODE_ID, "mode.set", {"mode": "payment", "amount_cents": 450,
                                                               "currency": "EUR"})
                self.say("the controller switches the gate to payment: EUR 4.50 per person")
            stranger = not people or rng.random() < self.plan.strangers
            if stranger:
                seed, expected = FIRST_STRANGER_SEED + k, None
            else:
                seed, expected = rng.choice(people)
            await self._arrive(gate, node, seed, expected)

    async def _arrive(self, gate: VirtualGate, node: Node, seed: int, expected: str | None) -> None:
        who = "stranger" if expected is None else f"person {seed - FIRST_PERSON_SEED + 1}"
        async with node.bus.subscribe(PaymentResult, buffer=4) as payments:
            shown = await arrive(gate, node, seed)
            for retry in shown[:-1]:
                self.summary.latencies_ms.append(retry.latency_ms)
                self.summary.counts["retries"] += 1
                self.say(f"{who:<11} → retry ({retry.reason}) in {retry.latency_ms:.0f} ms")
            decision = shown[-1] if shown else None
            self._show_decision(node, who, expected, decision)
            if decision is not None and decision.outcome == "identified" and node.modes.current.mode == "payment":
                with trio.move_on_after(5.0):
                    paid = await payments.receive()
                    self.summary.counts["payments approved" if paid.approved else "payments declined"] += 1
                    self.say(f"{'':<11}   payment of {paid.currency} {paid.amount_cents / 100:.2f} "
                             f"{'approved, ref ' + str(paid.reference) if paid.approved else 'declined: ' + str(paid.reason)}")
        await trio.sleep(0.3)

    def _show_decision(self, node: Node, who: str, expected: str | None, decision: Decision | None) -> None:
        s = self.summary
        if decision is None:
            s.counts["no decision"] += 1
            s.errors.append(f"{who}: the gate said nothing")
            self.say(f"{who:<11} → no decision (silent gate)  ✗")
            return
        s.latencies_ms.append(decision.latency_ms)
        if decision.outcome == "identified":
            right = decision.person_id == expected
            key = "identified correctly" if right else ("stranger admitted" if expected is None else "wrong person")
        elif decision.outcome == "unknown":
            right = expected is None
            key = "stranger refused" if right else "enrolled not recognised"
        else:                                  # still asked to try again when the person gave up
            right = False
            key = f"{'stranger ' if expected is None else ''}retry ({decision.reason})"
        s.counts[key] += 1
        score = f" score {decision.score:.3f}" if decision.score is not None else ""
        name = "" if decision.person_id is None else f" {decision.person_id[:8]}…"
        timings = node.identify.capturer.timings  # the decision's last capture
        if timings.nir_wait_ms and timings.surface_wait_ms:
            s.frame_waits_ms.append(timings.nir_wait_ms + timings.surface_wait_ms)
        self.say(f"{who:<11} → {decision.outcome}{name}{score} in {decision.latency_ms:.0f} ms  "
                 f"{'✓' if right else '✗ ' + key}")

    async def _unknown_card(self, gate: VirtualGate, node: Node) -> None:
        async with node.bus.subscribe(PaymentCardRead, buffer=4) as reads:
            pan = card_number(999_999)
            async with trio.open_nursery() as n:
                n.start_soon(gate.apply, sc.Card(at=0, kind="emv", pan=pan, seconds=0.8))
                with trio.move_on_after(3.0):
                    read = await reads.receive()
                    known = await node.people.find_by_card(read.token.digest)
                    self.summary.counts["unknown card" if known is None else "known card"] += 1
                    self.say(f"card …{read.last4} tapped: {'not enrolled' if known is None else 'enrolled'}")

    # ---- live view ------------------------------------------------------------------------------
    async def _show(self, events) -> None:
        async for ev in events:
            match ev:
                case DeviceStateChanged(name=name, new=DeviceState.LOST, error=err):
                    self.lost_at[name] = trio.current_time()
                    self.say(f"{name} LOST ({err})")
                case DeviceStateChanged(name=name, new=DeviceState.READY) if name in self.lost_at:
                    took = trio.current_time() - self.lost_at.pop(name)
                    self.summary.recoveries.append((name, took))
                    self.say(f"{name} READY again after {took:.2f} s")
                case Feedback():
                    self.summary.counts["feedback"] += 1

                case EnrolProgress(step="failed" | "duplicate", detail=detail):
                    self.say(f"enrolment: {detail}")


async def enrol_person(controller: Controller, node_id: str, gate: VirtualGate, node: Node, seed: int, *,
                       pan: str, phone: str, palms: tuple[str, ...] = ("right",)) -> tuple[dict, float]:
    """The controller asks ``node_id`` to enrol; person ``seed`` taps an EMV card ``pan`` and holds
    each palm over ``gate`` (session 1) until the gate has enough. Returns the controller's answer
    (``person_id`` or ``error``) and the seconds from the first palm prompt to the answer."""
    answer: dict = {}
    done = trio.Event()

    async def ask() -> None:
        try:
            answer.update(await controller.request(node_id, "enrol.begin", {
                "phone": phone, "palms": list(palms), "card_required": True}, timeout=60.0))
        except Exception as exc:  # RequestFailed / NodeUnavailable / timeout: the caller reports it
            answer["error"] = str(exc)
        done.set()

    async with trio.open_nursery() as nursery, node.bus.subscribe(EnrolProgress, buffer=64) as progress:
        nursery.start_soon(ask)
        await _until(progress, lambda ev: ev.step == "card", 10.0)
        nursery.start_soon(gate.apply, sc.Card(at=0, kind="emv", pan=pan, seconds=0.8))
        asked = (await _until(progress, lambda ev: ev.step == "palm", 10.0)).detail
        prompted = trio.current_time()
        with trio.move_on_after(30):
            await hold_palms(gate, node.bus, seed, done, hand=_palm_asked(asked))
        await done.wait()
        took = trio.current_time() - prompted
        nursery.cancel_scope.cancel()
    return answer, took


def _palm_asked(prompt: str) -> str:
    """The palm an enrolment prompt ("hold your left palm over the gate") asks for."""
    return "left" if "left" in prompt else "right"


async def hold_palms(gate: VirtualGate, bus: EventBus, seed: int, done: trio.Event, *, hand: str = "right",
                     seconds: float = 1.2) -> None:
    """Person ``seed`` at ``gate`` while an enrolment on ``bus`` wants palms, until ``done``: holds
    the palm it asks for (``hand`` first, then the one each "hold your ... palm" prompt names),
    lifts it as soon as it is asked to present it again (step "again"), and presents it again
    once the gate has seen it go, as it does after a hover of ``seconds`` that brought nothing
    (a blurred pose, say)."""
    asked = [hand]
    lift, gone = trio.Event(), trio.Event()
    async with bus.subscribe(EnrolProgress, PresenceChanged, buffer=64) as events, \
            trio.open_nursery() as nursery:
        async def listen() -> None:
            async for ev in events:
                if isinstance(ev, PresenceChanged):
                    if not ev.present:
                        gone.set()
                elif ev.step == "palm":
                    asked[0] = _palm_asked(ev.detail)
                elif ev.step == "again":
                    lift.set()

        nursery.start_soon(listen)
        while not done.is_set():
            lift, gone = trio.Event(), trio.Event()
            async with trio.open_nursery() as hovering:
                async def hover_once() -> None:
                    await gate.hover(150.0, seconds, approach_s=0.3, identity=seed, hand=asked[0])
                    hovering.cancel_scope.cancel()

                async def until(event: trio.Event) -> None:
                    await event.wait()
                    hovering.cancel_scope.cancel()

                hovering.start_soon(hover_once)
                hovering.start_soon(until, done)
                hovering.start_soon(until, lift)
            with trio.move_on_after(1.0):  # away until the gate has seen the hand go
                await gone.wait()
        nursery.cancel_scope.cancel()


async def arrive(gate: VirtualGate, node: Node, seed: int, *, session: int = 2, hand: str = "right",
                 distance_mm: float = 150.0, timeout: float = 4.0, presentations: int = 2) -> list[Decision]:
    """Person ``seed`` holds a hand over ``gate`` and, asked to try again (a retry), presents it
    again, as people do, up to ``presentations`` times. Every decision the gate showed, in order
    (empty when it said nothing within ``timeout``)."""
    shown: list[Decision] = []
    for _ in range(presentations):
        async with node.bus.subscribe(Decision, buffer=16) as decisions, trio.open_nursery() as hovering:
            hovering.start_soon(lambda: gate.hover(distance_mm, 1.5, approach_s=0.3, identity=seed,
                                                   session=session, hand=hand))
            with trio.move_on_after(timeout):
                async for ev in decisions:
                    shown.append(ev)
                    if ev.outcome != "retry":
                        break
        if not shown or shown[-1].outcome != "retry":
            break
        await trio.sleep(0.3)  # the hand has left; it comes back
    return shown


async def _until(events, want, timeout: float):
    with trio.fail_after(timeout):
        async for ev in events:
            if want(ev):
                return ev


async def play(plan: Plan = Plan(), *, out: TextIO = sys.stdout, gallery: Gallery | None = None) -> Summary:
    with tempfile.TemporaryDirectory(prefix="palmnode-demo-") as tmp:
        demo = Demo(plan, Path(tmp), out, gallery=gallery)
        return await demo.run()


def report(summary: Summary, out: TextIO = sys.stdout) -> None:
    s = summary
    print("\nsummary", file=out)
    if s.enrol_s:
        print(f"  enrolled          {len(s.enrol_s)} people, one palm each in {np.median(s.enrol_s):.1f} s median "
              f"(max {max(s.enrol_s):.1f} s)", file=out)
    if s.enrol_failed:
        print(f"  enrolments failed {len(s.enrol_failed)}: {', '.join(sorted(set(s.enrol_failed)))}", file=out)
    for key, n in sorted(s.counts.items()):
        print(f"  {key:<24} {n}", file=out)
    if s.latencies_ms:
        p50, p95, p99 = (s.percentile(q) for q in (50, 95, 99))
        print(f"  hand present → decision  p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms, "
              f"max {max(s.latencies_ms):.0f} ms ({len(s.latencies_ms)} decisions)", file=out)
    for name, seconds in s.recoveries:
        print(f"  {name} recovered after {seconds:.2f} s lost", file=out)
    if s.controller_events:
        print("  controller received " + ", ".join(f"{k} {v}" for k, v in sorted(s.controller_events.items())),
              file=out)
    for h in s.health:  # drops by reason (the camera's frames passed over for a lit one are not drops)
        dropped = ", ".join(f"{k.removeprefix('dropped_')} {v}" for k, v in sorted(h.counters.items())
                            if k.startswith("dropped_") and v) or "none"
        print(f"  {h.name:<12} {h.state.value:<8} restarts {h.restarts:<3} dropped: {dropped}", file=out)
    for line in s.errors:
        print(f"  error: {line}", file=out)
