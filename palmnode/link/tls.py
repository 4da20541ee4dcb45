"""SSL contexts for the link (docs/protocols/controller.md §1): TLS 1.3, certificates both ways."""
from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

import trio

MIN_TLS = ssl.TLSVersion.TLSv1_3  # §1: TLS 1.3 only


class TlsConfigError(ValueError):
    """A certificate, key or CA file is missing or unusable; one line naming the file and the fix."""


class PeerIdentityError(ValueError):
    """The verified peer certificate has no usable common name."""


def _load(context: ssl.SSLContext, cert: os.PathLike | str, key: os.PathLike | str,
          ca: os.PathLike | str) -> ssl.SSLContext:
    context.minimum_version = MIN_TLS
    context.verify_mode = ssl.CERT_REQUIRED
    for what, path in (("certificate", cert), ("key", key), ("CA certificate", ca)):
        try:
            found = Path(path).is_file()
        except OSError as exc:  # a folder on the way the node's user cannot enter (a 0700 one of root's)
            raise TlsConfigError(f"cannot read link {what} {path}: {exc.strerror or exc}") from None
        if not found:
            raise TlsConfigError(f"link {what} {path} not found; make a development set with: palmnode certs --out DIR")
    _check_key_mode(key)
    try:
        context.load_cert_chain(certfile=os.fspath(cert), keyfile=os.fspath(key))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot use link certificate {cert} with key {key}: {exc.args[-1]}") from None
    try:
        context.load_verify_locations(cafile=os.fspath(ca))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot use link CA certificate {ca}: {exc.args[-1]}") from None
    return context


def _check_key_mode(key: os.PathLike | str) -> None:
    """Refuse a private key its group or others may read or write (as the vault's and the card
    token's keys): whoever reads it can pose as this gate, or as the controller."""
    try:
        mode = stat.S_IMODE(os.stat(key).st_mode)
    except OSError as exc:
        raise TlsConfigError(f"cannot read link key {key}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise TlsConfigError(f"link key {key} has mode {mode:04o}, readable beyond its owner; run `chmod 600 {key}`")


def server_context(cert: os.PathLike | str, key: os.PathLike | str, ca: os.PathLike | str) -> ssl.SSLContext:
    """The controller's context: presents ``cert``, requires a client certificate issued by ``ca``."""
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, ca)


def client_context(cert: os.PathLike | str, key: os.PathLike | str, ca: os.PathLike | str) -> ssl.SSLContext:
    """A node's context: presents ``cert``, requires the server's certificate issued by ``ca`` and
    naming the ``server_hostname`` given at connect time (e.g. "controller", or "localhost")."""
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, key, ca)
    context.check_hostname = True
    return context


def peer_name(ssl_stream: trio.SSLStream) -> str:
    """The commonName of the peer's verified certificate (call after the handshake)."""
    cert = ssl_stream.getpeercert()
    if not cert:
        raise PeerIdentityError("the peer presented no certificate")
    for rdn in cert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName" and value:
                return value
    raise PeerIdentityError("the peer's certificate has no commonName")
