import functools
import os
import sqlite3
import stat
import threading
import time

import attrs
import pytest

from palmnode.vault import errors, store
from palmnode.vault import (
    DuplicateCard,
    DuplicatePerson,
    DuplicatePhone,
    InvalidPhone,
    TamperedData,
    Vault,
    VaultConfig,
    VaultError,
    VaultKeyError,
    open_vault,
)
from tests.conftest import returns_at_once
from tests.vault.factories import (
    KEYS,
    OTHER_KEYS,
    SECRET_HEX,
    card,
    person,
    phone,
    same_person,
    template_bytes,
)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "vault.db"


@pytest.fixture
def vault(path):
    with Vault.open(path, KEYS, node_id="node-a") as v:
        yield v


def vault_files(path):
    return [p for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")) if p.exists()]


def raw_bytes(path):
    return b"".join(p.read_bytes() for p in vault_files(path))


def sealed_templates(path, person_id):
    conn = sqlite3.connect(path)
    try:
        return [bytes(r[0]) for r in conn.execute("SELECT sealed FROM templates WHERE person_id = ?", (person_id,))]
    finally:
        conn.close()


def test_files_are_0600_and_pragmas_set(vault, path):
    vault.set_state("mode", "entry")
    files = vault_files(path)
    assert {p.name for p in files} == {"vault.db", "vault.db-wal", "vault.db-shm"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    conn = vault._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_one_vault_one_node(path):
    """A node opens its vault exclusively: a second node on the same file is refused in one line
    (it would go on recognising the people the first one deletes), a check still opens it, and
    the vault is free again once the first node closes it."""
    with Vault.open(path, KEYS, exclusive=True) as first:
        first.add_person(person(1, first))
        with pytest.raises(VaultError, match=r"in use by another node \(it holds vault.db.lock\)") as held:
            Vault.open(path, KEYS, exclusive=True)
        assert held.value.reason == errors.UNAVAILABLE and not held.value.lasting  # a later start may find it free
        with Vault.open(path, KEYS) as check:
            assert check.statistics()["people"] == 1
    assert stat.S_IMODE((path.with_name("vault.db.lock")).stat().st_mode) == 0o600
    with Vault.open(path, KEYS, exclusive=True) as again:
        assert again.statistics()["people"] == 1


def test_existing_wide_file_is_narrowed_to_0600(path):
    Vault.open(path, KEYS).close()
    os.chmod(path, 0o644)
    Vault.open(path, KEYS).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("palms", [1, 2])
def test_person_round_trip_survives_reopen(vault, path, palms):
    p = person(1, vault, palms=palms)
    assert vault.add_person(p) is None
    assert same_person(vault.get(p.person_id), p)
    assert len(vault.get(p.person_id).palms) == palms
    assert all(len(palm.templates) == 3 for palm in vault.get(p.person_id).palms)
    vault.close()
    with Vault.open(path, KEYS) as again:
        assert same_person(again.get(p.person_id), p)
        assert again.count() == 1
        assert again.get("nobody") is None


def test_person_without_card_or_phone(vault):
    p = person(2, vault)
    p = type(p)(p.person_id, None, None, p.palms, p.enrolled_at, p.origin_node)
    vault.add_person(p)
    assert same_person(vault.get(p.person_id), p)


def test_nothing_in_clear_on_disk(vault, path):
    p = person(3, vault, palms=2)
    vault.add_person(p, event=("enrolled", {"person_id": p.person_id, "payload_marker": "zq-marker-71"}))
    vault.scrub()
    data = raw_bytes(path)
    for t in template_bytes(p):
        assert t[4:68] not in data  # the template's code planes never touch the disk in clear
    assert phone(3).encode() not in data and phone(3).replace(" ", "").encode() not in data
    assert b"zq-marker-71" not in data and b"payload_marker" not in data  # outbox payloads are sealed


def test_find_by_card_and_phone_in_any_spelling(vault):
    p = person(4, vault)
    vault.add_person(p)
    assert vault.find_by_card(card(4).digest) == p.person_id
    assert vault.find_by_card(card(5).digest) is None
    assert vault.find_by_phone(phone(4)) == p.person_id
    assert vault.find_by_phone("0044-7700-(9)00004") == p.person_id
    assert vault.find_by_phone("+447700900005") is None
    with pytest.raises(InvalidPhone):
        vault.find_by_phone("call me")


@pytest.mark.parametrize("clash, error", [("card", DuplicateCard), ("phone", DuplicatePhone), ("id", DuplicatePerson)])
def test_duplicates_are_refused_with_nothing_written(vault, clash, error):
    first = person(10, vault)
    vault.add_person(first, event=("enrolled", {"person_id": first.person_id}))
    other = person(11, vault)
    changes = {"card": {"card": first.card}, "phone": {"phone_digest": first.phone_digest},
               "id": {"person_id": first.person_id}}[clash]
    other = attrs.evolve(other, **changes)
    before = (vault.count(), vault.pending_events(), vault.audit_entries())
    with pytest.raises(error) as info:
        vault.add_person(other, event=("enrolled", {"person_id": other.person_id}))
    assert "\n" not in str(info.value)
    assert (vault.count(), vault.pending_events(), vault.audit_entries()) == before
    assert vault.find_by_card(card(11).digest) is None
    assert vault.find_by_phone(phone(11)) is None


def test_tampered_template_on_disk_names_the_row(path):
    with Vault.open(path, KEYS) as v:
        p = person(20, v, palms=2)
        v.add_person(p)
        other = person(21, v)
        v.add_person(other)
    conn = sqlite3.connect(path)
    target = bytes(conn.execute("SELECT sealed FROM templates WHERE person_id = ? AND palm = 'left' AND idx = 1",
                                (p.person_id,)).fetchone()[0])
    conn.close()
    data = bytearray(path.read_bytes())
    at = data.find(target)
    assert at > 0 and data.find(target, at + 1) < 0
    data[at + 40] ^= 0x01
    path.write_bytes(bytes(data))
    with Vault.open(path, KEYS) as v:
        with pytest.raises(TamperedData) as info:
            v.get(p.person_id)
        message = str(info.value)
        assert "left#1" in message and p.person_id in message and "\n" not in message
        assert v.unreadable() == [message]
        with pytest.raises(TamperedData):
            list(v.people())
        assert same_person(v.get(other.person_id), other)  # the rest of the vault still reads


def test_a_tampered_search_template_is_left_out_of_the_search_batches_when_asked(path):
    """At a node's start (People.load) one bad search template must not keep everyone else out
    of the gallery: with a list given it is left out and its message appended; without, it raises."""
    with Vault.open(path, KEYS) as v:
        people = [person(30 + i, v) for i in range(3)]
        for p in people:
            v.add_person(p)
    conn = sqlite3.connect(path)
    where = "WHERE person_id = ? AND palm = 'right' AND idx = 0"
    blob = bytearray(conn.execute(f"SELECT sealed FROM templates {where}", (people[1].person_id,)).fetchone()[0])
    blob[40] ^= 0x01
    conn.execute(f"UPDATE templates SET sealed = ? {where}", (bytes(blob), people[1].person_id))
    conn.commit()
    conn.close()
    with Vault.open(path, KEYS) as v:
        with pytest.raises(TamperedData):
            list(v.search_templates())
        unreadable: list[str] = []
        got = [(pid, palm) for batch in v.search_templates(unreadable) for pid, palm, _ in batch]
        assert sorted(got) == sorted((p.person_id, e.palm) for p in people for e in p.palms
                                     if (p.person_id, e.palm) != (people[1].person_id, "right"))
        assert len(unreadable) == 1 and f"right#0 of person {people[1].person_id}" in unreadable[0]
        assert v.unreadable() == unreadable


def test_template_moved_to_another_row_fails_to_open(path):
    with Vault.open(path, KEYS) as v:
        a, b = person(30, v), person(31, v)
        v.add_person(a)
        v.add_person(b)
    conn = sqlite3.connect(path)
    blob = conn.execute("SELECT sealed FROM templates WHERE person_id = ? AND idx = 0", (a.person_id,)).fetchone()[0]
    conn.execute("UPDATE templates SET sealed = ? WHERE person_id = ? AND idx = 0", (blob, b.person_id))
    conn.commit()
    conn.close()
    with Vault.open(path, KEYS) as v, pytest.raises(TamperedData, match=f"#0 of person {b.person_id}"):
        v.get(b.person_id)


def test_wrong_key_is_a_typed_error(path):
    Vault.open(path, KEYS).close()
    with pytest.raises(VaultKeyError, match="different key"):
        Vault.open(path, OTHER_KEYS)


def test_not_a_vault(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 400)
    with pytest.raises(VaultError, match="not a usable palmnode vault") as info:
        Vault.open(junk, KEYS)
    assert info.value.reason == errors.DAMAGED and info.value.lasting
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(VaultError, match="not a palmnode vault") as info:
        Vault.open(other, KEYS)
    assert info.value.reason == errors.DAMAGED


def test_newer_schema_is_refused(path):
    Vault.open(path, KEYS).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE vault SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(VaultError, match="upgrade palmnode") as info:
        Vault.open(path, KEYS)
    assert info.value.reason == errors.UNKNOWN_SCHEMA and info.value.lasting


@pytest.mark.parametrize("version", [0, -3, "one", 1.5, b"\x01"])
def test_a_schema_version_no_palmnode_makes_is_a_one_line_vault_error(path, version):
    """A header row whose version is not one palmnode writes (0: no migration from it; text, a
    float, a blob) escaped the opening as a KeyError or ValueError, a traceback at a node's start."""
    Vault.open(path, KEYS).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE vault SET version = ?", (version,))
    conn.commit()
    conn.close()
    with pytest.raises(VaultError) as info:
        Vault.open(path, KEYS)
    assert str(info.value) == f"{path} has vault schema {version!r}, which no palmnode makes; restore it from a backup"
    assert info.value.reason == errors.DAMAGED


def test_a_vault_path_that_is_a_folder_says_so(tmp_path):
    (tmp_path / "vault.db").mkdir()
    with pytest.raises(VaultError) as info:
        Vault.open(tmp_path / "vault.db", KEYS, exclusive=True)
    assert str(info.value) == f"vault {tmp_path}/vault.db is a folder, not a file: name the vault's database file"
    assert info.value.reason == errors.NOT_WRITABLE
    (tmp_path / "etc").write_text("not a folder")
    with pytest.raises(VaultError) as info:
        Vault.open(tmp_path / "etc" / "vault.db", KEYS)
    assert str(info.value) == (f"cannot create vault {tmp_path}/etc/vault.db: cannot create its folder "
                               f"{tmp_path}/etc: a file is in the way")
    assert info.value.reason == errors.NOT_WRITABLE


def damage_page_of(path, blob: bytes) -> None:
    """Overwrite the b-tree page header of the page holding ``blob`` in the (closed) vault file:
    what a failing disk or a stray write leaves, SQLite's "database disk image is malformed"."""
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    at = data.find(blob)
    assert at > page_size and data.find(blob, at + 1) < 0
    start = at - at % page_size
    data[start:start + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))


def test_damaged_pages_met_while_reading_are_a_lasting_vault_error(path):
    """The file opens (its header pages are intact) but the templates' pages are not: the gallery's
    load at a node's start meets it; no restart cures it (reason damaged), the message says what to do."""
    with Vault.open(path, KEYS) as v:
        people = [person(90 + i, v) for i in range(12)]
        for p in people:
            v.add_person(p)
    conn = sqlite3.connect(path)
    blob = bytes(conn.execute("SELECT sealed FROM templates WHERE person_id = ? AND idx = 0",
                              (people[5].person_id,)).fetchone()[0])  # one the search reads
    conn.close()
    damage_page_of(path, blob)
    with Vault.open(path, KEYS) as v:
        with pytest.raises(VaultError) as info:
            for _ in v.search_templates([]):
                pass
    message = str(info.value)
    assert message == (f"vault {path}: database disk image is malformed; the file is damaged: restore it from "
                       "a backup (palmnode vault check names what it can)")
    assert info.value.reason == errors.DAMAGED and info.value.lasting


def test_a_tampered_sealed_value_is_damage():
    assert TamperedData("x").reason == errors.DAMAGED and VaultKeyError("x").lasting
    assert not VaultError("x").lasting and not DuplicateCard("x").lasting
    with pytest.raises(ValueError, match="unknown VaultError reason"):
        VaultError("x", reason="bad luck")


def test_outbox_order_keys_delivery_and_reopen(path):
    Vault.open(path, KEYS).close()
    clock = iter(range(100, 200)).__next__
    with Vault.open(path, KEYS, node_id="node-a", clock=clock) as v:
        events = [v.append_event("unknown", {"latency_ms": float(i), "reason": "no match"}) for i in range(5)]
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert len({e.key for e in events}) == 5 and all(e.key.startswith("node-a/") for e in events)
        assert [e.at for e in events] == [100.0, 101.0, 102.0, 103.0, 104.0]
        assert v.pending_events() == events
        assert v.pending_events(limit=2) == events[:2]
        v.mark_delivered(2)
        v.mark_delivered(2)  # idempotent
        v.mark_delivered(999)  # an event already purged is not an error
    with Vault.open(path, KEYS, node_id="node-a") as v:
        assert [e.seq for e in v.pending_events()] == [1, 3, 4, 5]
        assert v.pending_events()[0] == events[0]
        for e in events:
            v.mark_delivered(e.seq)
        assert v.pending_events() == []
        later = v.append_event("unknown", {"reason": "x"})
        assert later.seq == 6 and later.key not in {e.key for e in events}


def test_outbox_payload_round_trips_bytes_and_nesting(vault):
    data = {"person": {"person_id": "p1", "palms": [{"palm": "right", "templates": [b"\x00\x01"]}],
                       "card_digest": b"\xff" * 32, "phone_digest": None}, "score": 0.5}
    event = vault.add_person(person(40, vault), event=("enrolled", data))
    assert vault.pending_events() == [event]
    assert event.data == data


def test_seqs_are_never_reused_after_a_purge(vault):
    p = person(41, vault)
    first = vault.add_person(p, event=("enrolled", {"person_id": p.person_id}))
    vault.remove_person(p.person_id)
    assert vault.pending_events() == []
    assert vault.append_event("unknown", {}).seq == first.seq + 1


def test_remove_person_leaves_no_trace_in_any_vault_file(vault, path):
    keep, gone = person(50, vault, palms=2), person(51, vault, palms=2)
    vault.add_person(keep, event=("enrolled", {"person_id": keep.person_id}))
    vault.add_person(gone, event=("enrolled", {"person": {"person_id": gone.person_id}}))
    vault.append_event("identified", {"person_id": gone.person_id, "score": 0.9})
    delivered = vault.append_event("identified", {"person_id": gone.person_id, "score": 0.8})
    vault.mark_delivered(delivered.seq)
    vault.set_state("cursor", "17")
    ciphertexts = sealed_templates(path, gone.person_id)
    traces = [gone.person_id.encode(), gone.phone_digest, gone.card.digest, *ciphertexts]
    before = raw_bytes(path)
    assert all(t in before for t in traces)  # the scan can see them while they are enrolled

    removal = vault.remove_person(gone.person_id, event=("deleted", {"person_id": gone.person_id}), reason="request")
    assert removal is True
    after = raw_bytes(path)
    found = [i for i, t in enumerate(traces) if t in after]
    assert found == []
    for t in template_bytes(gone):
        assert t[4:68] not in after
    assert vault.get(gone.person_id) is None
    assert vault.find_by_card(gone.card.digest) is None and vault.find_by_phone(phone(51)) is None
    assert [e.kind for e in vault.pending_events()] == ["enrolled", "deleted"]
    assert vault.pending_events()[1].data == {"person_id": gone.person_id}
    assert same_person(vault.get(keep.person_id), keep)  # others untouched
    assert vault.get_state("cursor") == "17"
    entry = vault.audit_entries()[-1]
    assert entry["kind"] == "person_removed" and entry["reason"] == "request"
    assert entry["subject"] == vault.audit_subject(gone.person_id) != gone.person_id
    assert gone.person_id not in repr(vault.audit_entries())
    assert vault.integrity_check() == "ok"
    assert vault.remove_person(gone.person_id) is False
    assert len(vault.audit_entries()) == 3  # two enrolments and one removal


def test_audit_refuses_binary_fields_and_hashes_person_ids(vault):
    vault.audit("gate_mode", mode="payment", amount_cents=250, person_id="p-x")
    entry = vault.audit_entries()[-1]
    assert entry["mode"] == "payment" and entry["amount_cents"] == 250
    assert entry["subject"] == vault.audit_subject("p-x") and "person_id" not in entry
    with pytest.raises(ValueError, match="plain scalar"):
        vault.audit("oops", template=b"\x00" * 10)
    assert vault.audit_entries()[-1] == entry


def test_state(vault, path):
    assert vault.get_state("cursor") is None
    vault.set_state("cursor", "1")
    vault.set_state("cursor", "2")
    vault.close()
    with Vault.open(path, KEYS) as v:
        assert v.get_state("cursor") == "2"
    with pytest.raises(VaultError, match="closed"):
        vault.get_state("cursor")


def test_people_iterates_everyone_in_batches(vault):
    people = [person(n, vault, templates=1) for n in range(300)]  # more than one batch of people()
    for p in people:
        vault.add_person(p)
    loaded = list(vault.people())
    assert [p.person_id for p in loaded] == sorted(p.person_id for p in people)
    by_id = {p.person_id: p for p in people}
    assert all(same_person(p, by_id[p.person_id]) for p in loaded)


def test_search_templates_are_every_palms_first_in_batches_and_palm_templates_all_of_one(vault, monkeypatch):
    import palmnode.vault.store as store
    monkeypatch.setattr(store, "_TEMPLATE_BATCH", 7)  # batches end between a person's two palms too
    people = [person(n, vault) for n in range(20)]  # 1 or 2 palms of 3 templates each
    for p in people:
        vault.add_person(p)
    batches = list(vault.search_templates())
    assert [len(b) for b in batches] == [7, 7, 7, 7, 2]
    loaded = [(pid, palm, t.to_bytes()) for batch in batches for pid, palm, t in batch]
    assert loaded == sorted((p.person_id, palm.palm, palm.templates[0].to_bytes()) for p in people for palm in p.palms)
    assert len(loaded) == 30
    two = people[1]  # both palms
    for palm in two.palms:
        assert [t.to_bytes() for t in vault.palm_templates(two.person_id, palm.palm)] == \
            [t.to_bytes() for t in palm.templates]
    assert vault.palm_templates(people[0].person_id, "left") == () and vault.palm_templates("nobody", "right") == ()


def test_concurrent_reader_during_writes_of_two_threads(vault):
    done = threading.Event()
    seen, errors = [], []

    def reader():
        try:
            while not done.is_set():
                n = vault.count()
                ids = [p.person_id for p in vault.people()]
                assert len(ids) >= n  # people only ever get added here
                seen.append(n)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    def writer(first):
        try:
            for n in range(first, first + 30):
                vault.add_person(person(n, vault, templates=1), event=("enrolled", {"n": n}))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader), threading.Thread(target=writer, args=(100,)),
               threading.Thread(target=writer, args=(200,))]
    for thread in threads:
        thread.start()
    for thread in threads[1:]:
        thread.join(timeout=60)
    done.set()
    threads[0].join(timeout=60)
    assert not errors and seen == sorted(seen)
    assert vault.count() == 60 and vault.integrity_check() == "ok"
    events = vault.pending_events()
    assert [e.seq for e in events] == list(range(1, 61)) and sorted(e.data["n"] for e in events) == \
        list(range(100, 130)) + list(range(200, 230))


def test_open_vault_from_config(tmp_path):
    config = VaultConfig(path=str(tmp_path / "v.db"), key_file=str(tmp_path / "v.key"))
    with open_vault(config, env={}, create_key=True) as v:
        v.set_state("a", "b")
    with open_vault(config, env={}) as v:
        assert v.get_state("a") == "b"
    env_config = VaultConfig(path=str(tmp_path / "e.db"))
    with open_vault(env_config, env={"PALMNODE_VAULT_KEY": SECRET_HEX}) as v:
        v.set_state("a", "c")
    with Vault.open(tmp_path / "e.db", KEYS) as v:
        assert v.get_state("a") == "c"


def test_upsert_people_inserts_and_replaces_in_one_transaction(vault):
    a, b = person(60, vault), person(61, vault)
    vault.add_person(a, event=("enrolled", {"person_id": a.person_id}))
    changed = attrs.evolve(person(62, vault, palms=2, seed=9), person_id=a.person_id, card=a.card,
                           phone_digest=a.phone_digest)
    assert vault.upsert_people([changed, b]) == 2
    assert same_person(vault.get(a.person_id), changed) and same_person(vault.get(b.person_id), b)
    assert vault.count() == 2 and len(vault.pending_events()) == 1  # no events for replication
    assert [e["kind"] for e in vault.audit_entries()] == ["person_added", "person_replaced", "person_added"]
    clash = attrs.evolve(person(63, vault), card=b.card)
    with pytest.raises(DuplicateCard):
        vault.upsert_people([person(64, vault), clash])
    assert vault.count() == 2 and vault.find_by_card(card(64).digest) is None  # the whole batch rolled back


def test_delivered_events_older_than_the_kept_window_are_deleted(vault, monkeypatch):
    monkeypatch.setattr(store, "DELIVERED_KEPT", 2)
    events = [vault.append_event("unknown", {"i": i}) for i in range(6)]
    for e in events[:4]:
        vault.mark_delivered(e.seq)
    assert vault.pending_events() == events[4:]
    assert vault.statistics()["delivered_events"] == 2         # seq 3 and 4: 1 and 2 went
    vault.mark_delivered(events[5].seq)                         # seq 6: 3 and 4 go, 5 is still pending
    assert vault.pending_events() == events[4:5]
    assert vault.statistics()["delivered_events"] == 1
    assert vault.append_event("unknown", {}).seq == 7


def test_person_rejects_a_phone_that_is_not_a_digest(vault):
    with pytest.raises(TypeError):
        attrs.evolve(person(70, vault), phone_digest="+447700900070")


def test_another_process_holding_the_lock_is_a_one_line_vault_error(path):
    with Vault.open(path, KEYS, busy_timeout=0.05) as v:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(VaultError, match="locked.*nothing was written") as info:
                v.add_person(person(80, v))
            assert "\n" not in str(info.value)
        finally:
            other.execute("ROLLBACK")
            other.close()
        v.add_person(person(80, v))
        assert v.count() == 1


def read_transaction(path):
    """Another connection to the vault holding a read transaction (an sqlite3 shell, a backup)."""
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM people").fetchone()  # a snapshot: TRUNCATE cannot finish
    return reader


def wal_bytes(path):
    return path.with_name(path.name + "-wal").read_bytes()


def test_a_removal_a_reader_blocks_neither_waits_nor_forgets_its_truncation(path):
    """Another connection's read transaction keeps the WAL from being truncated after a removal:
    the removal must not wait out the busy timeout holding the vault (every identify, enrolment
    and decision of the gate), and the vault must say the WAL still needs truncating."""
    v = Vault.open(path, KEYS, busy_timeout=3600)
    gone, keep = person(81, v), person(82, v)
    v.add_person(gone)
    v.add_person(keep)
    traces = [gone.person_id.encode(), gone.card.digest, gone.phone_digest, *sealed_templates(path, gone.person_id)]
    reader = read_transaction(path)
    try:
        assert returns_at_once(functools.partial(v.remove_person, gone.person_id), reader) is True
        assert v.get(gone.person_id) is None and same_person(v.get(keep.person_id), keep)  # the removal stands
        assert v.scrub_pending and "read transaction" in v.scrub_blocked and "WAL not truncated" in v.scrub_blocked
        assert all(t in wal_bytes(path) for t in traces)  # the enrolment's page images are still in the -wal
        assert returns_at_once(v.scrub, reader) is False and v.scrub_pending  # again: blocked, not waiting
        reader.execute("COMMIT")
        assert v.scrub() and not v.scrub_pending and v.scrub_blocked is None
        assert wal_bytes(path) == b"" and not any(t in raw_bytes(path) for t in traces)
    finally:
        reader.close()
        v.close()


def test_opening_truncates_a_wal_a_closed_vault_could_not(path):
    v = Vault.open(path, KEYS, busy_timeout=3600)
    gone = person(83, v)
    v.add_person(gone)
    reader = read_transaction(path)
    try:
        returns_at_once(functools.partial(v.remove_person, gone.person_id), reader)
        returns_at_once(v.close, reader)  # its last try is blocked too: the WAL outlives this vault
        assert v.scrub_pending and gone.card.digest in wal_bytes(path)
        again = returns_at_once(functools.partial(Vault.open, path, KEYS, busy_timeout=3600), reader)
        assert again.scrub_pending and gone.card.digest in wal_bytes(path)  # still blocked at the opening
        again.close()
        reader.execute("COMMIT")  # the reader lets go but keeps the file open (the WAL stays)
        with Vault.open(path, KEYS) as reopened:
            assert not reopened.scrub_pending and gone.card.digest not in raw_bytes(path)
    finally:
        reader.close()


def test_opening_a_vault_another_process_has_locked(path):
    Vault.open(path, KEYS).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(VaultError, match="cannot open vault .*locked") as info:
            Vault.open(path, KEYS, busy_timeout=0.05)
        assert info.value.reason == errors.UNAVAILABLE and str(info.value).endswith("database is locked")
        assert isinstance(info.value, errors.VaultBusy) and not info.value.lasting  # a caller may try again
        began = time.monotonic()
        with pytest.raises(errors.VaultBusy):  # the opening waits its own timeout, not the transactions'
            Vault.open(path, KEYS, busy_timeout=60, open_busy_timeout=0.05)
        assert time.monotonic() - began < 30
    finally:
        other.execute("ROLLBACK")
        other.close()
    with Vault.open(path, KEYS, busy_timeout=7.5, open_busy_timeout=0.05) as v:  # after it, busy_timeout holds
        assert v._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 7500
