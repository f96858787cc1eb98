"""A small certificate authority for ``unifiedq serve`` and ``quic://`` clients.

``unifiedq certs init`` makes a CA; ``unifiedq certs issue`` signs server and client
certificates with it (ECDSA P-256, SHA-256), for development and tests. Production setups can
use any CA: the server only needs ``--cert/--key/--client-ca`` and the client ``ca/cert/key``.

Example::

    unifiedq certs init  --dir ./pki
    unifiedq certs issue --dir ./pki --name server --server --san 127.0.0.1 --san localhost
    unifiedq certs issue --dir ./pki --name worker1 --client

Files: ``<dir>/ca.pem``, ``<dir>/ca.key``, ``<dir>/<name>.pem``, ``<dir>/<name>.key``. Keys are
written with mode 0600 and never overwritten unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertPair", "certs_main", "issue", "load_pair", "make_ca", "write_pair"]

CertPair = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]

_DAY = _dt.timedelta(days=1)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "unifiedq"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def make_ca(
    common_name: str = "unifiedq dev CA",
    *,
    days: int = 3650,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
) -> CertPair:
    """Create a self-signed CA certificate and its key.

    Args:
        common_name: The CA's CN.
        days: Validity from now (ignored when ``not_after`` is given).
        not_before: Start of validity (default: one day ago, to absorb clock skew).
        not_after: End of validity.

    Returns:
        ``(certificate, private_key)``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - _DAY
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after or _now() + days * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _san(entries: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for entry in entries:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            out.append(x509.DNSName(entry))
    return out


def issue(
    ca: CertPair,
    common_name: str,
    *,
    server: bool = False,
    client: bool = False,
    san: Sequence[str] = (),
    days: int = 825,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
) -> CertPair:
    """Sign a leaf certificate with ``ca``.

    Args:
        ca: The CA's ``(certificate, key)``.
        common_name: The leaf's CN (for clients: the identity the server logs).
        server: Allow TLS server authentication (``serverAuth``).
        client: Allow TLS client authentication (``clientAuth``).
        san: Subject alternative names: IP addresses or DNS names (servers need the name or
            address clients connect to; ``common_name`` is added as a DNS name when empty).
        days: Validity from now (ignored when ``not_after`` is given).
        not_before: Start of validity (default: one day ago).
        not_after: End of validity (a past date makes an expired certificate, for tests).

    Returns:
        ``(certificate, private_key)``.
    """
    if not (server or client):
        raise ValueError("issue() needs server=True and/or client=True")
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    names = _san(san) if san else [x509.DNSName(common_name)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or _now() - _DAY)
        .not_valid_after(not_after or _now() + days * _DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def write_pair(pair: CertPair, cert_path: Path, key_path: Path, *, force: bool = False) -> None:
    """Write a certificate and its key as PEM files (the key with mode 0600).

    Raises:
        FileExistsError: A file exists and ``force`` is False.
    """
    cert, key = pair
    for path in (cert_path, key_path):
        if path.exists() and not force:
            raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Create the key file private from the start rather than chmod-ing it afterwards.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(key_path, 0o600)


def load_pair(cert_path: Path, key_path: Path) -> CertPair:
    """Load a PEM certificate and its (unencrypted) EC private key."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} does not hold an EC private key")
    return cert, key


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unifiedq certs",
        description="Make a development CA and certificates for `unifiedq serve` and quic://.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    init = sub.add_parser("init", help="create <dir>/ca.pem and <dir>/ca.key")
    init.add_argument("--dir", required=True, type=Path, help="where to write the files")
    init.add_argument("--name", default="unifiedq dev CA", help="the CA's common name")
    init.add_argument("--days", type=int, default=3650, help="validity in days")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    iss = sub.add_parser("issue", help="sign <dir>/<name>.pem and <dir>/<name>.key")
    iss.add_argument("--dir", required=True, type=Path, help="directory holding ca.pem/ca.key")
    iss.add_argument("--name", required=True, help="common name and file name of the leaf")
    iss.add_argument("--server", action="store_true", help="a server certificate")
    iss.add_argument("--client", action="store_true", help="a client certificate")
    iss.add_argument("--san", action="append", default=[],
                     help="subject alternative name (IP or DNS); repeatable")
    iss.add_argument("--days", type=int, default=825, help="validity in days")
    iss.add_argument("--force", action="store_true", help="overwrite existing files")
    return p


def certs_main(argv: list[str] | None = None) -> int:
    """Entry point of ``unifiedq certs init|issue``; returns the process exit code."""
    args = _parser().parse_args(argv)
    directory: Path = args.dir
    try:
        if args.cmd == "init":
            pair = make_ca(args.name, days=args.days)
            write_pair(pair, directory / "ca.pem", directory / "ca.key", force=args.force)
            print(f"wrote {directory / 'ca.pem'} and {directory / 'ca.key'}")
            return 0
        if not (args.server or args.client):
            print("unifiedq certs issue: give --server and/or --client", file=sys.stderr)
            return 2
        if not all(c.isalnum() or c in "-_." for c in args.name):
            print("unifiedq certs issue: --name may hold letters, digits, '-', '_', '.'",
                  file=sys.stderr)
            return 2
        ca = load_pair(directory / "ca.pem", directory / "ca.key")
        san = args.san or (["127.0.0.1", "::1", "localhost"] if args.server else [])
        pair = issue(ca, args.name, server=args.server, client=args.client, san=san,
                     days=args.days)
        cert_path, key_path = directory / f"{args.name}.pem", directory / f"{args.name}.key"
        write_pair(pair, cert_path, key_path, force=args.force)
        print(f"wrote {cert_path} and {key_path}")
        return 0
    except (OSError, ValueError) as exc:
        print(f"unifiedq certs {args.cmd}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(certs_main())
