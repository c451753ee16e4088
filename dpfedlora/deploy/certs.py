"""A throwaway certificate authority for a loopback (or lab) deployment, with ``cryptography``.

- CA: EC P-384, self-signed, ``BasicConstraints(ca=True)``.
- SuperLink certificate: signed by the CA, SAN ``localhost`` and ``127.0.0.1``, server auth.
- One EC P-384 key pair per SuperNode, in OpenSSH format, for Flower's SuperNode
  authentication (``flwr supernode register``).

Private keys are written 0600. For a real federation use your organisation's CA; the README says
how.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Certificates", "make_certificates"]


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    node_keys: tuple[Path, ...]  # private keys; the public key is next to each, ``.pub``


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _subject_alt_names(hosts):
    from cryptography import x509

    names: list = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for host in hosts:
        try:
            entry = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in names:
            names.append(entry)
    return x509.SubjectAlternativeName(names)


def make_certificates(
    folder: str | Path, nodes: int, *, days: int = 7, hosts: list[str] | tuple[str, ...] = ()
) -> Certificates:
    """``hosts``: the SuperLink's other names or IP addresses (a lab federation across machines);
    ``localhost`` and ``127.0.0.1`` are always in its certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    pem = serialization.Encoding.PEM

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("dpfedlora throwaway CA"))
        .issuer_name(name("dpfedlora throwaway CA")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA384())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP384R1())
    alt = _subject_alt_names(hosts)
    cert = (
        x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(alt, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )  # fmt: skip
    out = Certificates(folder / "ca.crt", folder / "server.pem", folder / "server.key", ())
    out.ca.write_bytes(ca.public_bytes(pem))
    out.server_cert.write_bytes(cert.public_bytes(pem))
    _write_private(out.server_key, key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    node_keys = []
    for i in range(nodes):
        k = ec.generate_private_key(ec.SECP384R1())
        path = folder / f"supernode-{i}"
        _write_private(path, k.private_bytes(
            pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))  # fmt: skip
        path.with_suffix(".pub").write_bytes(k.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))  # fmt: skip
        node_keys.append(path)
    return Certificates(out.ca, out.server_cert, out.server_key, tuple(node_keys))
