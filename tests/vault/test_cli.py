import json
import os
import sqlite3
import stat

import pytest

from palmnode.vault import Vault, load_keys, store
from palmnode.vault.cli import main
from tests.vault.factories import person


def test_keygen_then_check_prints_counts(tmp_path, capsys):
    key = tmp_path / "vault.key"
    assert main(["keygen", str(key)]) == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    db = tmp_path / "vault.db"
    with Vault.open(db, load_keys(key, env={})) as vault:
        vault.add_person(person(1, vault, palms=2), event=("enrolled", {"n": 1}))
    capsys.readouterr()
    assert main(["check", "--vault", str(db), "--key-file", str(key)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["integrity"] == "ok"
    assert (report["people"], report["palms"], report["templates"], report["pending_events"]) == (1, 2, 6, 1)
    assert main(["keygen", str(key)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_check_reports_problems_in_one_line(tmp_path, capsys):
    key = tmp_path / "vault.key"
    main(["keygen", str(key)])
    assert main(["check", "--vault", str(tmp_path / "absent.db"), "--key-file", str(key)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    db = tmp_path / "vault.db"
    with Vault.open(db, load_keys(key, env={})):
        pass
    os.chmod(key, 0o644)
    assert main(["check", "--vault", str(db), "--key-file", str(key)]) == 1
    err = capsys.readouterr().err
    assert "chmod 600" in err and err.count("\n") == 1


def test_check_creates_nothing_from_an_empty_file_or_a_folder(tmp_path, capsys):
    """An emptied vault file is reported as such, not made into a new vault that checks 'ok'."""
    key = tmp_path / "vault.key"
    main(["keygen", str(key)])
    empty = tmp_path / "vault.db"
    empty.touch()
    capsys.readouterr()
    assert main(["check", "--vault", str(empty), "--key-file", str(key)]) == 1
    err = capsys.readouterr().err
    assert "is empty (0 bytes), not a vault" in err and err.count("\n") == 1
    assert empty.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["vault.db", "vault.key"]
    assert main(["check", "--vault", str(tmp_path), "--key-file", str(key)]) == 1
    assert "is not a file" in capsys.readouterr().err


def test_check_opens_every_sealed_value_and_names_the_ones_that_fail(tmp_path, capsys):
    """SQLite's integrity check passes a blob altered in place; the check opens every sealed value."""
    key = tmp_path / "vault.key"
    main(["keygen", str(key)])
    db = tmp_path / "vault.db"
    with Vault.open(db, load_keys(key, env={})) as vault:
        target = person(1, vault)
        vault.add_person(target, event=("enrolled", {"n": 1}))
        vault.add_person(person(2, vault))
    conn = sqlite3.connect(db)
    where = "WHERE person_id = ? AND palm = 'right' AND idx = 1"
    blob = bytearray(conn.execute(f"SELECT sealed FROM templates {where}", (target.person_id,)).fetchone()[0])
    blob[-1] ^= 0x01
    conn.execute(f"UPDATE templates SET sealed = ? {where}", (bytes(blob), target.person_id))
    conn.commit()
    conn.close()
    capsys.readouterr()
    assert main(["check", "--vault", str(db), "--key-file", str(key)]) == 1
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["integrity"] == "ok" and report["unreadable"] == 1 and report["people"] == 2
    assert out.err.count("\n") == 1 and "right#1 of person " + target.person_id in out.err
    assert "fails authentication" in out.err


def test_check_holds_no_read_transaction_while_it_opens_sealed_values(tmp_path, capsys, monkeypatch):
    """The node removes someone while ``palmnode vault check`` opens the vault's sealed values
    (seconds on a large vault): the node's WAL truncation succeeds at once. The check read each
    table in one read transaction held across all the decryption, so the removed person's old
    pages stayed in the node's -wal file for as long as it ran."""
    key = tmp_path / "vault.key"
    main(["keygen", str(key)])
    db = tmp_path / "vault.db"
    node = Vault.open(db, load_keys(key, env={}), node_id="gate-1", exclusive=True)  # the running node's
    enrolled = [person(n, node, palms=2) for n in range(1, 5)]
    for p in enrolled:
        node.add_person(p)
    conn = sqlite3.connect(db)  # a tampered template far from the first page: the check still names it
    where = "WHERE person_id = ? AND palm = 'left' AND idx = 2"
    blob = bytearray(conn.execute(f"SELECT sealed FROM templates {where}", (enrolled[-1].person_id,)).fetchone()[0])
    blob[-1] ^= 0x01
    conn.execute(f"UPDATE templates SET sealed = ? {where}", (bytes(blob), enrolled[-1].person_id))
    conn.commit()
    conn.close()
    monkeypatch.setattr(store, "_TEMPLATE_BATCH", 5)  # 24 templates: several pages
    removed = []
    real_open = store.open_

    def opening(*args):
        if not removed:  # the check opens its first sealed value: the node removes someone meanwhile
            assert node.remove_person(enrolled[0].person_id)
            removed.append((node.scrub_pending, node.scrub_blocked))
        return real_open(*args)
    monkeypatch.setattr(store, "open_", opening)
    capsys.readouterr()
    try:
        assert main(["check", "--vault", str(db), "--key-file", str(key)]) == 1
        out = capsys.readouterr()
        assert removed == [(False, None)]  # truncated at once: no read transaction of the check in the way
        report = json.loads(out.out)
        assert report["people"] == 3 and report["unreadable"] == 1
        assert "left#2 of person " + enrolled[-1].person_id in out.err
        assert not any(enrolled[0].card.digest in f.read_bytes() for f in tmp_path.glob("vault.db*"))
    finally:
        node.close()


def test_parser_requires_an_action():
    with pytest.raises(SystemExit):
        main([])


def test_check_without_a_key_names_the_option_and_a_bad_key_names_keygen(tmp_path, capsys, monkeypatch):
    """`palmnode vault check --vault F` with no key said "configure a key file", which a command
    line has no way to do; a key file that is not hex pointed at a python one-liner instead of
    `palmnode vault keygen`."""
    monkeypatch.delenv("PALMNODE_VAULT_KEY", raising=False)
    key = tmp_path / "vault.key"
    main(["keygen", str(key)])
    db = tmp_path / "vault.db"
    with Vault.open(db, load_keys(key, env={})):
        pass
    capsys.readouterr()
    assert main(["check", "--vault", str(db)]) == 1
    assert capsys.readouterr().err == ("palmnode vault: no vault key: set PALMNODE_VAULT_KEY (64 hex digits) or "
                                       "give a key file (--key-file)\n")
    key.write_text("not hex\n")
    assert main(["check", "--vault", str(db), "--key-file", str(key)]) == 1
    assert capsys.readouterr().err == (f"palmnode vault: vault key file {key} is not hex; it must hold 64 hex "
                                       "digits (make one with `palmnode vault keygen FILE`)\n")
