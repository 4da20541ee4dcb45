import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from palmnode.vault import (
    TamperedData,
    VaultKeyError,
    VaultKeys,
    create_key_file,
    load_keys,
    open_,
    seal,
)

SECRET_HEX = "11" * 32
REPO = Path(__file__).resolve().parents[2]


def test_create_key_file_is_0600_hex_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "vault.key"
    create_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(bytes.fromhex(path.read_text().strip())) == 32
    with pytest.raises(VaultKeyError, match="already exists"):
        create_key_file(path)


def test_load_keys_from_file_is_stable_and_keys_differ(tmp_path):
    path = tmp_path / "vault.key"
    keys = load_keys(path, env={}, create=True)
    assert keys == load_keys(path, env={})
    assert len(keys.template_key) == len(keys.lookup_key) == 32
    assert keys.template_key != keys.lookup_key
    assert "secret" in repr(keys) and keys.template_key.hex() not in repr(keys)


def test_load_keys_from_env():
    keys = load_keys(None, env={"PALMNODE_VAULT_KEY": SECRET_HEX})
    assert keys == VaultKeys.from_secret(bytes.fromhex(SECRET_HEX))
    assert load_keys(None, env={"K": SECRET_HEX}, env_name="K") == keys


def test_group_readable_key_file_is_refused_naming_file_and_fix(tmp_path):
    path = tmp_path / "vault.key"
    create_key_file(path)
    os.chmod(path, 0o640)
    with pytest.raises(VaultKeyError) as info:
        load_keys(path, env={})
    message = str(info.value)
    assert str(path) in message and "chmod 600" in message and "\n" not in message


@pytest.mark.parametrize("content, reason", [("zz" * 32, "not hex"), ("11" * 16, "16 bytes"), ("", "0 bytes"),
                                             ("11" * 31 + "1\n", "holds 63 hex digits; it must hold 64")])
def test_malformed_key_file(tmp_path, content, reason):
    path = tmp_path / "vault.key"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(VaultKeyError, match=reason):
        load_keys(path, env={})


def test_missing_key_file_and_missing_env(tmp_path):
    with pytest.raises(VaultKeyError, match="missing"):
        load_keys(tmp_path / "absent.key", env={})
    with pytest.raises(VaultKeyError, match="PALMNODE_VAULT_KEY"):
        load_keys(None, env={})
    with pytest.raises(VaultKeyError, match="3 bytes"):
        load_keys(None, env={"PALMNODE_VAULT_KEY": "abcdef"})


def test_seal_round_trip_binds_aad_and_detects_tampering():
    keys = VaultKeys.from_secret(bytes(32))
    blob = seal(keys.template_key, b"palm", b"templates:p1:left:0")
    assert blob != seal(keys.template_key, b"palm", b"templates:p1:left:0")  # fresh nonce
    assert open_(keys.template_key, blob, b"templates:p1:left:0") == b"palm"
    with pytest.raises(TamperedData):
        open_(keys.template_key, blob, b"templates:p1:left:1")
    with pytest.raises(TamperedData):
        open_(keys.lookup_key, blob, b"templates:p1:left:0")
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    with pytest.raises(TamperedData):
        open_(keys.template_key, bytes(flipped), b"templates:p1:left:0")
    with pytest.raises(TamperedData, match="shorter"):
        open_(keys.template_key, blob[:20], b"")


def test_a_fifo_as_key_file_is_refused_instead_of_waiting_for_a_writer(tmp_path):
    # os.open of a FIFO without O_NONBLOCK waits for a writer forever: run it in a child, so a
    # regression fails on the timeout instead of hanging the test session
    path = tmp_path / "vault.key"
    os.mkfifo(path, 0o600)
    code = ("import sys\nfrom palmnode.vault import VaultKeyError, load_keys\n"
            "try:\n    load_keys(sys.argv[1], env={})\nexcept VaultKeyError as exc:\n    print(exc)\n")
    child = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert child.stdout.strip() == f"vault key file {path} is not a regular file", child.stderr[-800:]


def test_a_symlinked_key_file_is_refused_naming_the_symlink(tmp_path):
    target = tmp_path / "real.key"
    create_key_file(target)
    link = tmp_path / "vault.key"
    link.symlink_to(target)
    with pytest.raises(VaultKeyError) as info:
        load_keys(link, env={})
    assert str(info.value) == (f"vault key file {link} is a symbolic link; name the key file itself "
                               f"(mode 0600) in the configuration")
