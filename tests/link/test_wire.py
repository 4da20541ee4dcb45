"""A person on the wire (docs/protocols/controller.md §8)."""
from __future__ import annotations

import numpy as np
import pytest

from drivers.card_reader.cardtoken import CardToken
from palmnode.biometrics.types import ModalityCode, PalmTemplate
from palmnode.link.codec import Decoder, encode
from palmnode.link.messages import Request
from palmnode.link.wire import WireError, person_from_wire, person_to_wire
from palmnode.vault.records import EnrolledPalm, Person


def template(seed: int) -> PalmTemplate:
    rng = np.random.default_rng(seed)

    def code(rows):
        planes = rng.integers(0, 2**32, (4, rows), dtype=np.uint64).astype(np.uint32)
        if rows < 32:
            planes &= np.uint32((1 << rows) - 1)
        return ModalityCode.from_planes(planes)

    return PalmTemplate(surface=code(32), vein=code(16))


def person(card: bool = True) -> Person:
    return Person(
        person_id="p-1",
        card=CardToken(b"\x11" * 32, "4242") if card else None,
        phone_digest=b"\x22" * 32 if card else None,
        palms=(EnrolledPalm("right", (template(1), template(2))), EnrolledPalm("left", (template(3),))),
        enrolled_at=1700000000.25,
        origin_node="gate-1",
    )


def same(a: Person, b: Person) -> bool:
    def flat(p):
        return (p.person_id, p.card, p.phone_digest, p.enrolled_at, p.origin_node,
                [(e.palm, [t.to_bytes() for t in e.templates]) for e in p.palms])
    return flat(a) == flat(b)


@pytest.mark.parametrize("card", [True, False])
def test_round_trip_through_a_frame(card):
    p = person(card)
    wire = person_to_wire(p)
    assert wire["card_digest"] == (b"\x11" * 32 if card else None)
    dec = Decoder()
    dec.receive_data(encode(Request(id=1, op="person.upsert", args={"person": wire})))
    req = dec.next_event()
    assert same(person_from_wire(req.args["person"]), p)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda w: w.pop("person_id"), "missing field 'person_id'"),
        (lambda w: w.update(card_digest="abc"), "card_digest"),
        (lambda w: w.update(card_digest=b""), "digest of 0 bytes"),
        (lambda w: w.update(palms=[{"palm": "right", "templates": []}]), "templates"),
        (lambda w: w.update(palms=[{"palm": "right", "templates": [b"junk"]}]), "not a palm template"),
        (lambda w: w.update(palms=[{"palm": "middle", "templates": [template(1).to_bytes()]}]), "palm must be"),
        (lambda w: w.update(palms=["right"]), "each palm must be a map"),
        (lambda w: w.update(enrolled_at=float("inf")), "finite"),
        (lambda w: w.update(enrolled_at=True), "enrolled_at"),
    ],
)
def test_bad_shapes_are_one_line_wire_errors(change, words):
    wire = person_to_wire(person())
    change(wire)
    with pytest.raises(WireError, match=words) as info:
        person_from_wire(wire)
    assert "\n" not in str(info.value)


def test_not_a_map():
    with pytest.raises(WireError):
        person_from_wire([1])
