"""Test certificates for the TLS tests, and the TLS broker `.ci/extra-broker start tls` starts.

`python -m tests.amqp._tls DIR` writes into DIR: a test CA (`ca.pem`), the broker's
certificate for `localhost` signed by it (`server.pem`, `server.key`), a client
certificate (`client.pem`, `client.key`), a CA that signed nothing here (`other-ca.pem`)
and an expired certificate for `localhost` (`expired.pem`, `expired.key`).
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ("AMQPS_URI", "TLS_DIR", "write_certificates")

#: The TLS broker's URI (`.ci/extra-broker start tls` starts it) and the folder of its certificates.
AMQPS_URI: Final = os.environ.get("FARINE_TEST_AMQPS_URI", "")
TLS_DIR: Final = Path(os.environ.get("FARINE_TEST_TLS_DIR", "/nonexistent"))

_KEY = ec.SECP256R1()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(
    folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None
) -> None:
    (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (folder / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def _authority(
    common_name: str, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(_KEY)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    *,
    server: bool,
    valid: tuple[datetime.datetime, datetime.datetime],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(_KEY)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def write_certificates(folder: Path) -> None:
    """Write the test certificates and keys into `folder` (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    current = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    ca = _authority("farine test CA", now)
    _write(folder, "ca", ca[0], None)
    _write(folder, "other-ca", _authority("farine other CA", now)[0], None)
    _write(folder, "server", *_issue(ca, "localhost", server=True, valid=current))
    _write(folder, "client", *_issue(ca, "farine test client", server=False, valid=current))
    expired = (now - datetime.timedelta(days=30), now - datetime.timedelta(days=1))
    _write(folder, "expired", *_issue(ca, "localhost", server=True, valid=expired))
    for path in folder.iterdir():
        path.chmod(0o644)  # the broker runs as its own user


if __name__ == "__main__":
    write_certificates(Path(sys.argv[1]))
