"""Fixtures of the link's tests: a development PKI (real certificates) per test module."""
from __future__ import annotations

import pytest

from palmnode.link.certs import make_dev_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_dev_pki(tmp_path_factory.mktemp("pki"), nodes=["gate-1", "gate-2"])


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory):
    """Certificates with the same names from an unrelated CA."""
    return make_dev_pki(tmp_path_factory.mktemp("other-pki"), nodes=["gate-1", "gate-2"])
