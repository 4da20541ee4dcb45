"""Hypothesis: phone normalisation and the decrypt path never fail with anything but their typed errors."""
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from palmnode.vault import (
    InvalidPhone,
    TamperedData,
    Vault,
    VaultError,
    normalise_phone,
    open_,
    seal,
)
from tests.vault.factories import KEYS, person

CANONICAL = re.compile(r"\+[1-9][0-9]{6,14}")
FUZZ = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])

numbers = st.from_regex(r"[1-9][0-9]{6,14}", fullmatch=True)
separators = st.sampled_from([" ", "-", ".", "(", ")", "/", ""])


@FUZZ
@given(st.text(max_size=80))
def test_any_text_normalises_or_is_invalid_phone(text):
    try:
        result = normalise_phone(text)
    except InvalidPhone as exc:
        assert "\n" not in str(exc)
        digits = "".join(ch for ch in text if ch.isdigit())
        assert len(digits) < 4 or digits not in str(exc)  # the error never echoes the number
        return
    assert CANONICAL.fullmatch(result)
    assert normalise_phone(result) == result


@FUZZ
@given(numbers, st.sampled_from(["+", "00", "", "+ "]), st.lists(separators, min_size=15, max_size=15),
       st.sampled_from(["", " ", "\t"]))
def test_every_spelling_of_a_number_normalises_alike(number, prefix, seps, pad):
    spelled = pad + prefix + "".join(d + s for d, s in zip(number, seps)) + pad
    assert normalise_phone(spelled) == "+" + number


@pytest.mark.parametrize("bad", ["", "+", "0044", "020 7946 0000", "+0 123 4567", "+1 23", "+1234567890123456",
                                 "+44 20 7946 000٠", "+44 20 7946 0000 ext 1", "12345678" * 9, "+44\n2079460000"])
def test_invalid_phones(bad):
    with pytest.raises(InvalidPhone):
        normalise_phone(bad)


@FUZZ
@given(st.binary(max_size=200), st.binary(max_size=40))
def test_random_blobs_never_open(blob, aad):
    with pytest.raises(TamperedData):
        open_(KEYS.template_key, blob, aad)


@FUZZ
@given(st.binary(max_size=900), st.binary(max_size=40), st.data())
def test_sealed_values_open_only_unaltered(plaintext, aad, data):
    blob = seal(KEYS.template_key, plaintext, aad)
    assert open_(KEYS.template_key, blob, aad) == plaintext
    position = data.draw(st.integers(0, len(blob) - 1))
    altered = bytearray(blob)
    altered[position] ^= 1 << data.draw(st.integers(0, 7))
    for broken in (bytes(altered), blob[:data.draw(st.integers(0, len(blob) - 1))], blob + b"\x00"):
        with pytest.raises(TamperedData):
            open_(KEYS.template_key, broken, aad)


stored_values = st.one_of(st.binary(max_size=900), st.text(max_size=50), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False))


@pytest.fixture(scope="module")
def fuzz_vault():
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vault.db"
        with Vault.open(path, KEYS) as vault:
            p = person(7, vault, palms=2)
            vault.add_person(p)
            event = vault.append_event("enrolled", {"person_id": p.person_id})
            yield vault, p, event


@settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=stored_values, where=st.sampled_from(["template", "card", "outbox"]))
def test_garbage_in_a_sealed_column_is_a_typed_error(fuzz_vault, value, where):
    vault, p, event = fuzz_vault
    conn = vault._conn  # write the garbage straight into the file's rows, as an attacker with the file could
    table, column, row = {"template": ("templates", "sealed", "person_id = ? AND palm = 'left' AND idx = 2"),
                          "card": ("cards", "last4", "person_id = ?"),
                          "outbox": ("outbox", "sealed", "person_id = ?")}[where]
    (original,) = conn.execute(f"SELECT {column} FROM {table} WHERE {row}", (p.person_id,)).fetchone()
    conn.execute(f"UPDATE {table} SET {column} = ? WHERE {row}", (value, p.person_id))
    try:
        with pytest.raises(VaultError) as info:
            vault.pending_events() if where == "outbox" else vault.get(p.person_id)
        assert isinstance(info.value, TamperedData) and "\n" not in str(info.value)
    finally:
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE {row}", (original, p.person_id))
    assert vault.get(p.person_id) is not None and vault.pending_events() == [event]
