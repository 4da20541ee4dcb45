"""A store: the reference controller and real nodes on virtual gates, over mutual TLS.

A person enrolled at one gate is recognised at the other; deleted at one, gone from both within
a second with nothing of them left in either vault file; events of a time the controller was
away all arrive once it is back, none twice.
"""
from __future__ import annotations

from pathlib import Path

import trio

from palmnode.actors import GateState
from palmnode.controller.server import Controller, ControllerConfig
from drivers.card_reader.reads import PaymentCardRead
from palmnode.controller.server import RequestFailed
from palmnode.demo import arrive, card_number, enrol_person, hold_palms, node_config
from palmnode.gate.enrol import CANCELLED_BY_DELETION, EnrolState
from palmnode.gate.events import EnrolProgress
from palmnode.sim import scenario as sc
from palmnode.link.certs import make_dev_pki
from palmnode.node import Node
from palmnode.sim.gate import VirtualGate
from palmnode.vault import create_key_file
from tests.conftest import wait_for

PERSON, STRANGER = 4_242, 61_001


def controller_for(tmp_path: Path, port: int = 0) -> Controller:
    key = tmp_path / "controller.key"
    if not key.exists():
        create_key_file(key)
    return Controller(ControllerConfig.from_certs_dir(tmp_path / "certs", db_path=str(tmp_path / "controller.db"),
                                                      key_file=str(key), port=port))


async def gate_and_node(nursery, tmp_path: Path, node_id: str, port: int, seed: int) -> tuple[VirtualGate, Node]:
    gate = VirtualGate(tmp_path / f"sim-{node_id}", camera_port=0, seed=seed)
    endpoints = await nursery.start(gate.run)
    node = Node(node_config(endpoints, tmp_path, node_id, controller_port=port, certs=tmp_path / "certs", vault=True))
    await nursery.start(node.run)
    await wait_for(lambda: node.health.gate is GateState.READY and node.link.connected, timeout=10.0)
    return gate, node


def vault_bytes(tmp_path: Path, node_id: str) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.glob(f"{node_id}.vault.db*"))


async def test_enrolled_at_one_gate_recognised_at_the_other_and_deleted_from_both(nursery, tmp_path):
    make_dev_pki(tmp_path / "certs", nodes=["gate-a", "gate-b"])
    controller = controller_for(tmp_path)
    port = await nursery.start(controller.run)
    gate_a, node_a = await gate_and_node(nursery, tmp_path, "gate-a", port, seed=1)
    gate_b, node_b = await gate_and_node(nursery, tmp_path, "gate-b", port, seed=2)

    answer, took = await enrol_person(controller, "gate-a", gate_a, node_a, PERSON, pan=card_number(1),
                                      phone="+4930555000001")
    person_id = answer.get("person_id")
    assert person_id, answer
    print(f"one palm enrolled in {took:.2f} s")  # the budget is the gate bench's
    await wait_for(lambda: len(node_b.gallery) == len(node_a.gallery) > 0, timeout=2.0)  # replicated

    for _ in range(3):  # told "unknown" (one attempt in a few hundred: the FNIR), a person comes back
        decision = (await arrive(gate_b, node_b, PERSON))[-1]
        if decision.outcome == "identified":
            break
    assert decision.outcome == "identified" and decision.person_id == person_id, decision
    stranger = (await arrive(gate_b, node_b, STRANGER))[-1]
    assert stranger.outcome == "unknown"

    templates = [t.to_bytes() for p in node_a.vault.get(person_id).palms for t in p.templates]
    assert node_b.vault.get(person_id) is not None
    deleted_at = trio.current_time()
    answer = await controller.request("gate-a", "person.delete", {"person_id": person_id})
    assert answer == {"deleted": True, "person_id": person_id, "enrolment_cancelled": False}
    await wait_for(lambda: len(node_b.gallery) == 0 and node_b.vault.get(person_id) is None, timeout=1.0)
    assert trio.current_time() - deleted_at < 1.0
    assert len(node_a.gallery) == 0 and node_a.vault.get(person_id) is None
    for node_id in ("gate-a", "gate-b"):
        raw = vault_bytes(tmp_path, node_id)
        assert person_id.encode() not in raw and person_id.encode().hex().encode() not in raw
        assert not any(t[:64] in raw for t in templates)
    gone = (await arrive(gate_b, node_b, PERSON))[-1]
    assert gone.outcome == "unknown"


async def test_events_of_a_time_the_controller_was_away_arrive_once(nursery, tmp_path):
    make_dev_pki(tmp_path / "certs", nodes=["gate-a"])
    first = controller_for(tmp_path)
    async with trio.open_nursery() as up:
        port = await up.start(first.run)
        gate, node = await gate_and_node(nursery, tmp_path, "gate-a", port, seed=3)
        before = len(first.store.events())
        up.cancel_scope.cancel()  # the controller goes away
    await wait_for(lambda: not node.link.connected, timeout=5.0)

    decisions = [(await arrive(gate, node, STRANGER + k))[-1] for k in range(3)]
    assert all(d.outcome == "unknown" for d in decisions)
    await wait_for(lambda: node.identify.recorder.waiting == 0, timeout=5.0)  # written off the flow's path
    assert len(node.vault.pending_events(limit=100)) >= 3

    second = controller_for(tmp_path, port=port)  # back on the same address, same record
    await nursery.start(second.run)
    await wait_for(lambda: node.link.connected, timeout=10.0)
    await wait_for(lambda: not node.vault.pending_events(limit=100), timeout=10.0)
    events = second.store.events(node_id="gate-a")
    unknown = [e for e in events if e.kind == "unknown"]
    assert len(unknown) == 3
    assert len({e.key for e in events}) == len(events)  # applied exactly once
    assert len(events) >= before + 3


async def test_a_gate_that_was_away_catches_up_by_sync(nursery, tmp_path):
    make_dev_pki(tmp_path / "certs", nodes=["gate-a", "gate-b"])
    controller = controller_for(tmp_path)
    port = await nursery.start(controller.run)
    gate_a, node_a = await gate_and_node(nursery, tmp_path, "gate-a", port, seed=1)
    answer, _ = await enrol_person(controller, "gate-a", gate_a, node_a, PERSON, pan=card_number(2),
                                   phone="+4930555000002")
    assert answer.get("person_id"), answer
    gate_b, node_b = await gate_and_node(nursery, tmp_path, "gate-b", port, seed=2)  # starts after the enrolment
    await wait_for(lambda: node_b.vault.get(answer["person_id"]) is not None, timeout=5.0)
    assert len(node_b.gallery) == len(node_a.gallery)
    # the cursor is stored once the page is applied (a crash between the two re-applies the page)
    await wait_for(lambda: node_b.vault.get_state("controller_sync_cursor") is not None, timeout=5.0)


async def test_the_controllers_deletion_of_an_enrolment_in_progress_cancels_it_and_says_so(nursery, tmp_path):
    """The controller asks a gate to delete a person by phone (then, another time, by card) while
    that person's enrolment, which it began, is still at the palms: the deletion answered "deleted:
    false" (nobody stored yet) and the enrolment then stored them. Now the enrolment is cancelled,
    enrol.begin answers why, person.delete says it cancelled one, and nothing is stored anywhere."""
    make_dev_pki(tmp_path / "certs", nodes=["gate-a"])
    controller = controller_for(tmp_path)
    port = await nursery.start(controller.run)
    gate, node = await gate_and_node(nursery, tmp_path, "gate-a", port, seed=5)
    for n, named_by in enumerate(["phone", "card"]):
        phone, begun = f"+493055500010{n}", {}

        async def begin() -> None:
            try:
                begun["answer"] = await controller.request("gate-a", "enrol.begin", {
                    "phone": phone, "palms": ["right"], "card_required": True}, timeout=60.0)
            except RequestFailed as exc:
                begun["error"] = str(exc)

        async with trio.open_nursery() as inner, \
                node.bus.subscribe(EnrolProgress, PaymentCardRead, buffer=256) as events:
            inner.start_soon(begin)
            await wait_for(lambda: node.enrol.state is EnrolState.CARD, timeout=10.0)
            inner.start_soon(gate.apply, sc.Card(at=0, kind="emv", pan=card_number(10 + n), seconds=0.8))
            async for ev in events:
                if isinstance(ev, PaymentCardRead):
                    digest = ev.token.digest
                elif ev.step == "palm":
                    break
            done = trio.Event()
            inner.start_soon(lambda: hold_palms(gate, node.bus, PERSON + n, done))   # still at the palms
            await wait_for(lambda: node.enrol.state is EnrolState.PALM, timeout=5.0)
            named = {"phone": phone} if named_by == "phone" else {"card_digest": digest}
            answer = await controller.request("gate-a", "person.delete", named)
            await wait_for(lambda: bool(begun), timeout=5.0)
            done.set()
        assert answer == {"deleted": False, "person_id": None, "enrolment_cancelled": True}, named_by
        assert begun == {"error": f"node gate-a enrol.begin: {CANCELLED_BY_DELETION}"}, named_by
        assert node.vault.count() == 0 and len(node.gallery) == 0
    await wait_for(lambda: not node.vault.pending_events(limit=100), timeout=10.0)   # all delivered
    assert not [e for e in controller.store.events(node_id="gate-a") if e.kind == "enrolled"]
