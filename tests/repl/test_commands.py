"""What commands let out: config redaction, event fields, follow type names."""
from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from drivers.card_reader.cardtoken import CardToken
from drivers.card_reader.reads import PaymentCardRead
from palmnode.actors import DeviceState, DeviceStateChanged
from palmnode.gate.events import Decision, PersonEnrolled
from palmnode.gate.modes import GateMode, ModeChanged
from palmnode.logs import event_to_plain
from palmnode.repl.commands import COMMANDS, CommandError, config_to_plain, resolve_follow, uptime


@attrs.frozen
class Link:
    ca: str = "/etc/palmnode/ca.pem"
    key: str = "/etc/palmnode/gate.key"          # a key *file*: shown
    token_key_file: Path = Path("/etc/palmnode/keys/card_token.key")
    key_env: str = "PALMNODE_VAULT_KEY"
    password: str = "hunter2"                      # inline secret: hidden
    secret_key: str = "-----BEGIN PRIVATE KEY-----\nMIIE"
    api_token: str | None = None
    raw: bytes = b"\x00\x01"
    channels: dict = attrs.field(factory=lambda: {"ir": 9})


@attrs.frozen
class Config:
    link: Link = Link()
    node_id: str = "gate-1"


def test_config_shows_key_files_by_path_and_hides_secrets():
    assert config_to_plain(Config()) == {"link": {
        "ca": "/etc/palmnode/ca.pem", "key": "/etc/palmnode/gate.key",
        "token_key_file": "/etc/palmnode/keys/card_token.key", "key_env": "PALMNODE_VAULT_KEY",
        "password": "<hidden>", "secret_key": "<hidden>", "api_token": None, "raw": "<hidden>",
        "channels": {"ir": 9}}, "node_id": "gate-1"}


def test_events_lose_tokens_expiry_and_anything_not_scalar():
    card = PaymentCardRead(token=CardToken(digest=b"\x02" * 32, last4="0004"), last4="0004", expiry="2612",
                           scheme="visa")
    assert event_to_plain(card) == {"type": "PaymentCardRead", "last4": "0004", "scheme": "visa"}
    change = DeviceStateChanged("camera", DeviceState.READY, DeviceState.LOST, "DeviceLost: gone", 7.5)
    assert event_to_plain(change) == {"type": "DeviceStateChanged", "name": "camera", "old": "ready",
                                      "new": "lost", "error": "DeviceLost: gone", "at": 7.5}
    decision = Decision("retry", None, None, float("nan"), "hold still", 40.0, "entry", 1.0)
    assert event_to_plain(decision)["score"] is None
    mode = ModeChanged(GateMode("payment", 450, "EUR"), at=2.0)  # its mode was left out of the log line
    assert event_to_plain(mode) == {"type": "ModeChanged", "at": 2.0, "reason": "set",
                                    "mode": {"mode": "payment", "amount_cents": 450, "currency": "EUR",
                                             "once": False}}


def test_follow_names_and_groups():
    assert resolve_follow(("Decision",)) == (Decision,)
    assert PersonEnrolled in resolve_follow(("gate",)) and Decision in resolve_follow(("gate",))
    assert ModeChanged in resolve_follow(("gate",)) and resolve_follow(("modechanged",)) == (ModeChanged,)
    assert set(resolve_follow(("decision,personenrolled",))) == {Decision, PersonEnrolled}
    assert len(resolve_follow(())) >= 18
    with pytest.raises(CommandError, match="no event type 'x'"):
        resolve_follow(("x",))


@pytest.mark.parametrize("seconds, text", [(0, "0:00:00"), (59.9, "0:00:59"), (3725, "1:02:05"),
                                           (86399, "23:59:59"), (90061, "1 d 1:01:01"), (40 * 86400, "40 d 0:00:00")])
def test_uptime_reads_as_days_and_a_clock(seconds, text):
    assert uptime(seconds) == text


def test_every_command_has_usage_and_help():
    for name, command in COMMANDS.items():
        assert command.usage.split()[0] == name and command.summary
        assert command.min_args <= command.max_args
