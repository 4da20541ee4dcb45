import json
import os
import stat

import pytest

from palmnode.vault import Vault, load_keys
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
    os.chmod(key, 0o644)
    db = tmp_path / "vault.db"
    db.touch()
    assert main(["check", "--vault", str(db), "--key-file", str(key)]) == 1
    err = capsys.readouterr().err
    assert "chmod 600" in err and err.count("\n") == 1


def test_parser_requires_an_action():
    with pytest.raises(SystemExit):
        main([])
