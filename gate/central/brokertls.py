"""The broker folder's small CA: a CA certificate, the broker's server certificate (for its TLS listener) and,
on request, a gate's client certificate whose common name is its gate id. Made with `cryptography`."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_YEARS, LEAF_YEARS = 20, 5


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gate"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, years: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=365 * years))
    )


def make_ca() -> tuple[bytes, bytes]:
    """(ca.key PEM, ca.crt PEM)."""
    key = _key()
    name = _name("gate broker CA")
    cert = (
        _builder(name, name, key.public_key(), CA_YEARS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key_pem(key), cert_pem(cert)


def _leaf(ca_key_pem: bytes, ca_cert_pem: bytes, cn: str, server_names: list[str] | None) -> tuple[bytes, bytes]:
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    ca = x509.load_pem_x509_certificate(ca_cert_pem)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names is not None else ExtendedKeyUsageOID.CLIENT_AUTH
    b = (
        _builder(_name(cn), ca.subject, key.public_key(), LEAF_YEARS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server_names is not None:
        alt: list[x509.GeneralName] = []
        for n in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return key_pem(key), cert_pem(b.sign(ca_key, hashes.SHA256()))


def server_cert(ca_key_pem: bytes, ca_cert_pem: bytes, names: list[str]) -> tuple[bytes, bytes]:
    """(server.key, server.crt) for the broker, valid for each of `names` (host names or IP addresses)."""
    return _leaf(ca_key_pem, ca_cert_pem, names[0], names)


def client_cert(ca_key_pem: bytes, ca_cert_pem: bytes, identity: str) -> tuple[bytes, bytes]:
    """(client.key, client.crt) with common name `identity` (a gate id)."""
    return _leaf(ca_key_pem, ca_cert_pem, identity, None)


def server_names_of(cert: Path) -> list[str]:
    try:
        ext = x509.load_pem_x509_certificate(cert.read_bytes()).extensions
        alt = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return []
    return [str(v) for v in alt.get_values_for_type(x509.DNSName)] + [
        str(v) for v in alt.get_values_for_type(x509.IPAddress)
    ]
