"""A development PKI for the link (docs/protocols/controller.md §9): one CA, a controller, nodes.

``make_dev_pki(folder, nodes=["gate-1"])`` writes ``ca.pem``/``ca.key`` and ``<name>.pem``/
``<name>.key`` for the controller and each node (EC P-256, keys 0600; each file written new and
renamed into place, so a link at its name is replaced, not followed) in a folder only its user
can change (made or tightened to 0700; one others may write is refused). An existing CA in the
folder is reused, so nodes can be added later; an existing pair is kept (a gate may be using it)
unless ``renew`` names it. ``palmnode certs --out DIR --node gate-1 [--renew NAME]`` runs it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from palmnode.private_files import others_may_change, replace_file

CA_NAME = "palmnode development CA"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a node id doubles as a file name
CLOCK_SKEW = dt.timedelta(minutes=5)  # certificates are valid from a little before now
MAX_DAYS = 36500  # --days at most (a century); a validity end past 9999 cannot be written at all


class PkiError(ValueError):
    """The PKI cannot be made or read; one line naming the file or name and the fix."""


@attrs.frozen
class CertPair:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path


@attrs.frozen
class PkiPaths:
    """Where :func:`make_dev_pki` put things."""

    folder: Path
    ca_cert: Path
    ca_key: Path
    controller: CertPair
    nodes: Mapping[str, CertPair]
    #: the names whose pair was already there and was left as it was, each with its certificate's end
    kept: Mapping[str, dt.datetime] = attrs.field(factory=dict)

    def pair(self, name: str) -> CertPair:
        """The certificate and key for the controller's or a node's name."""
        if name == self.controller.cert.stem:
            return self.controller
        try:
            return self.nodes[name]
        except KeyError:
            raise PkiError(f"no certificate for {name!r} in {self.folder}; run palmnode certs --node {name}") from None


def _write(path: Path, data: bytes, mode: int) -> None:
    try:  # a new file renamed over the name: a link planted there is replaced, not written through
        replace_file(path, data, mode)
    except OSError as exc:
        raise PkiError(f"cannot write {path}: {exc.strerror or exc}") from None


def _private_folder(folder: Path) -> None:
    """Refuse an --out folder others may write or another user owns (root aside): what is in it
    (a CA to reuse, a link at a key's name) may be theirs, and they could read or swap what is
    written. Tighten one others may read or enter to its owner alone (0700): it holds ca.key."""
    try:
        st = os.stat(folder)
    except OSError as exc:
        raise PkiError(f"cannot use folder {folder}: {exc.strerror or exc}") from None
    why = others_may_change(st, os.geteuid(), "you")
    if why is not None:
        raise PkiError(f"folder {folder} {why}: its files may not be yours and the keys written there would not "
                       "be private; choose an --out folder only you can write")
    if st.st_mode & 0o077:
        try:
            os.chmod(folder, stat.S_IMODE(st.st_mode) & 0o7700)
        except OSError as exc:
            raise PkiError(f"cannot make folder {folder} 0700 (it holds ca.key): {exc.strerror or exc}") from None


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _make_ca(days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(cn: str, *, server: bool, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
               days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    # §1: only the controller may act as a TLS server, and only a node as a client (the controller
    # never dials anyone, so its key need not, and must not, pass for a gate's)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    sans = [x509.DNSName(cn), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot read the CA in {cert_path.parent}: {exc}; remove ca.pem/ca.key to make a new one") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise PkiError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def _check_kept(pair: CertPair, name: str, ca_cert: x509.Certificate) -> dt.datetime:
    """An existing pair that may be kept: its certificate issued by ``ca_cert``, its key the
    certificate's. Its validity end; :class:`PkiError` naming the file otherwise."""
    renew = f"pass --renew {name} to issue a new pair"
    try:
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read {pair.cert}: {exc}; {renew}") from None
    try:
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot read {pair.key}: {exc}; {renew}") from None
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError(f"{pair.cert} was not issued by the CA in {pair.cert.parent}: {renew}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise PkiError(f"{pair.key} is not the key of {pair.cert}: {renew}")
    return cert.not_valid_after_utc


def existing_names(folder: Path) -> list[str]:
    """The names with a certificate or a key in ``folder`` (the CA's aside), sorted."""
    try:
        files = [p for p in Path(folder).iterdir() if p.suffix in (".pem", ".key")]
    except OSError:  # no folder (or not one): no pairs
        return []
    return sorted({p.stem for p in files if p.stem != "ca" and NAME_RE.fullmatch(p.stem)})


def make_dev_pki(folder: Path, *, nodes: Sequence[str], controller: str = "controller",
                 days: int = 365, renew: Sequence[str] = ()) -> PkiPaths:
    """Write a CA (or reuse the one in ``folder``) and certificates for ``controller`` and ``nodes``.

    A name whose ``<name>.pem`` and ``<name>.key`` are already there keeps them (a gate or the
    controller may be using them): they are checked against the CA, not rewritten. The names in
    ``renew`` get a new key and certificate over their old ones; a name there with neither file in
    ``folder`` is refused (a misspelt name, or the wrong folder). Nothing is written when any name
    is refused."""
    folder = Path(folder)
    names = [controller, *nodes]
    names += [name for name in dict.fromkeys(renew) if name not in names]
    for name in names:
        if not NAME_RE.fullmatch(name) or name == "ca":
            raise PkiError(f"{name!r} is not a usable name: 1-64 of A-Z a-z 0-9 . _ -, not starting with . _ -, not 'ca'")
    if len(set(names)) != len(names):
        raise PkiError(f"names must be distinct, got {', '.join(names)}")
    if not 1 <= days <= MAX_DAYS:
        raise PkiError(f"days must be 1 to {MAX_DAYS}, got {days}")
    for name in dict.fromkeys(renew):  # a misspelt name, or the wrong folder, would get a new pair
        if not ((folder / f"{name}.pem").exists() or (folder / f"{name}.key").exists()):
            there = ", ".join(existing_names(folder)) or "none"
            raise PkiError(f"--renew {name}: {folder} has no {name}.pem or {name}.key to renew (pairs there: "
                           f"{there}); --node {name} issues a first pair")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise PkiError(f"cannot create folder {folder}: {exc.strerror or exc}") from None
    _private_folder(folder)
    ca_cert_path, ca_key_path = folder / "ca.pem", folder / "ca.key"
    new_ca = False
    if ca_cert_path.exists() and ca_key_path.exists():
        ca_cert, ca_key = _load_ca(ca_cert_path, ca_key_path)
    elif ca_cert_path.exists() or ca_key_path.exists():  # half a CA: a new one would overwrite the other half
        there, gone = (ca_cert_path, ca_key_path) if ca_cert_path.exists() else (ca_key_path, ca_cert_path)
        raise PkiError(f"{there} is there but {gone} is not: restore {gone.name}, or move {there.name} "
                       "away to make a new CA")
    else:
        ca_cert, ca_key = _make_ca(days)
        new_ca = True
    pairs = {name: CertPair(folder / f"{name}.pem", folder / f"{name}.key") for name in names}
    kept = {}
    for name, pair in pairs.items():  # every refusal before anything is written
        if name in renew or not (pair.cert.exists() or pair.key.exists()):
            continue
        if not (pair.cert.exists() and pair.key.exists()):  # half a pair: its other half may be in use
            there, gone = (pair.cert, pair.key) if pair.cert.exists() else (pair.key, pair.cert)
            raise PkiError(f"{there} is there but {gone} is not: restore {gone.name}, or pass --renew {name} "
                           "to issue a new pair")
        kept[name] = _check_kept(pair, name, ca_cert)
    if new_ca:
        _write(ca_key_path, _key_pem(ca_key), 0o600)
        _write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    for name, pair in pairs.items():
        if name in kept:
            continue
        cert, key = _make_leaf(name, server=name == controller, ca_cert=ca_cert, ca_key=ca_key, days=days)
        _write(pair.key, _key_pem(key), 0o600)
        _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return PkiPaths(folder=folder, ca_cert=ca_cert_path, ca_key=ca_key_path,
                    controller=pairs.pop(controller), nodes=pairs, kept=kept)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``palmnode certs``."""
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for ca.pem, <name>.pem/.key (made or tightened to 0700; one others may "
                        "write is refused)")
    parser.add_argument("--node", action="append", default=[], metavar="ID",
                        help="a node id to issue a certificate for (repeatable); the CN the controller sees")
    parser.add_argument("--controller", default="controller", metavar="NAME",
                        help="the controller's certificate name (default: controller)")
    parser.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    parser.add_argument("--renew", action="append", default=[], metavar="NAME",
                        help="issue a new key and certificate for this node id or the controller's name, "
                        "replacing the ones in --out, which must be there (repeatable); without it an "
                        "existing pair is kept")


def main(args: argparse.Namespace) -> int:
    """``palmnode certs``: make or extend a development PKI; prints what it wrote."""
    try:
        paths = make_dev_pki(args.out, nodes=args.node, controller=args.controller, days=args.days,
                             renew=args.renew)
    except (PkiError, OSError) as exc:  # 1, as every subcommand's own errors (argparse's usage errors: 2)
        print(f"palmnode certs: {exc}", file=sys.stderr)
        return 1
    print(f"CA          {paths.ca_cert}  (key {paths.ca_key}: keep it off the gates)")
    now = dt.datetime.now(dt.UTC)
    for name, pair in [(args.controller, paths.controller), *paths.nodes.items()]:
        note = ""
        if name in paths.kept:
            end = paths.kept[name]
            valid = f"valid until {end:%Y-%m-%d}" if end > now else f"EXPIRED on {end:%Y-%m-%d}"
            note = f"  (kept: it exists, {valid}; --renew {name} issues a new pair)"
        print(f"{name:<11} {pair.cert}  {pair.key}{note}")
    return 0
