"""Scenario scripts: the shipped ones parse; mistakes are one line naming the step and the fix."""
from pathlib import Path

import pytest

from palmnode.sim import scenario as sc

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "config" / "scenarios").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_scenarios_parse(path):
    script = sc.load(path)
    assert script.steps and script.duration > 0
    assert list(script.steps) == sorted(script.steps, key=lambda s: s.at)


@pytest.mark.parametrize("step, message", [
    ({"at": 1, "action": "dance"}, "action must be one of"),
    ({"action": "hand"}, "missing 'at'"),
    ({"at": 1, "action": "unplug", "device": "toaster"}, "device must be one of"),
    ({"at": 1, "action": "hand", "distance": 5}, "unknown key 'distance'"),
    ({"at": -1, "action": "hand"}, "at must not be negative"),
    ({"at": 1, "action": "hand", "seconds": "long"}, "seconds must be a number"),
    ({"at": 1, "action": "card", "kind": "emv", "pan": "12ab"}, "pan must be 12-19 digits"),
    ({"at": 1, "action": "card", "uid": "zz"}, "uid must be 4, 7 or 10 bytes"),
    ({"at": 1, "action": "card", "expiry": "2913"}, "expiry must be YYMM"),
    # these passed and broke the virtual gate once played: a traceback (nan, 1.5 bytes) or a
    # gate busy for hours making random bytes
    ({"at": float("nan"), "action": "hand"}, "at must be a finite number, got nan"),
    ({"at": 1, "action": "stall", "device": "camera", "seconds": float("inf")}, "seconds must be a finite number"),
    ({"at": 1, "action": "garbage", "device": "proximity", "bytes": 1.5}, "bytes must be a whole number, got 1.5"),
    ({"at": 1, "action": "hand", "identity": 2.5}, "identity must be a whole number"),
    ({"at": 1, "action": "garbage", "device": "proximity", "bytes": 10**11}, "bytes must be at most 1048576"),
])
def test_mistakes_name_the_step(step, message):
    with pytest.raises(sc.ScenarioError) as info:
        sc.parse({"step": [{"at": 0, "action": "hand"}, step]}, where="s.toml")
    text = str(info.value)
    assert message in text and "s.toml step 2" in text and "\n" not in text


def test_unknown_top_level_and_missing_file(tmp_path):
    with pytest.raises(sc.ScenarioError, match="unknown top-level key 'steps'"):
        sc.parse({"steps": []})
    with pytest.raises(sc.ScenarioError, match="does not exist"):
        sc.load(tmp_path / "nope.toml")


async def test_a_played_card_step_logs_neither_its_number_nor_its_expiry(gate):
    """The virtual gate logs each step it plays; a card's number and expiry are what the node
    itself never logs of a card (README), so the simulated gate does not either."""
    import io
    import logging

    from palmnode import logs

    stream = io.StringIO()
    logs.setup("debug", stream=stream)
    try:
        await gate.play(sc.parse({"step": [{"at": 0, "action": "card", "kind": "emv", "pan": "4000000000001018",
                                             "expiry": "2711", "seconds": 0.05}]}, where="s.toml"))
    finally:
        logging.getLogger().handlers.clear()
    lines = [line for line in stream.getvalue().splitlines() if "scenario step" in line]
    assert len(lines) == 1 and '"kind": "emv"' in lines[0]
    assert "4000000000001018" not in lines[0] and "2711" not in lines[0], lines[0]


def test_a_card_step_without_expiry_plays_a_card_valid_for_years():
    """A fixed default ("2812") would make every scenario's, the demo's and the tests' cards
    expired one day, and the enrol flow refuses an expired card."""
    import datetime

    from palmnode.gate.enrol import card_expired

    step = sc.parse({"step": [{"at": 0, "action": "card", "kind": "emv"}]}).steps[0]
    today = datetime.date.today()
    assert step.expiry == sc.Card(at=0).expiry == sc.valid_expiry()
    assert card_expired(step.expiry, today) is False
    assert card_expired(step.expiry, today.replace(year=today.year + 2, day=1)) is False
