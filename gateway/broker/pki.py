"""The complex's broker PKI: one certificate authority per complex, one server certificate.

EC P-256 throughout (the ESP32's mbedTLS handles it, and a handshake costs a
device far less than with RSA). The CA signs only the broker's server
certificate; devices authenticate with passwords (``passwords.py``) and verify
the broker against the CA certificate kept on their flash (``mqtt.ca_file``).

Idempotent: an existing CA is reused (re-creating it would strand every
installed device), and the server certificate is re-issued only when its names
change, it was signed by another CA, or it is within ``RENEW_BEFORE`` of expiry.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .files import write_private, write_public

log = logging.getLogger(__name__)

CA_DAYS = 20 * 365
SERVER_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)

CA_KEY, CA_CERT = "ca.key", "ca.crt"
SERVER_KEY, SERVER_CERT = "server.key", "server.crt"


class PkiError(Exception):
    """The CA or a certificate on disk is unusable (wrong type, corrupt, mismatched)."""


@dataclass(frozen=True)
class ServerNames:
    """What the server certificate is valid for: DNS names and IP addresses."""

    dns: tuple[str, ...]
    ips: tuple[str, ...]

    @classmethod
    def parse(cls, names: Iterable[str]) -> "ServerNames":
        dns: list[str] = []
        ips: list[str] = []
        for n in names:
            n = n.strip()
            if not n:
                continue
            try:
                ips.append(str(ipaddress.ip_address(n)))
            except ValueError:
                dns.append(n.lower())
        if not dns and not ips:
            raise PkiError("the server certificate needs at least one host name or IP address")
        return cls(tuple(sorted(set(dns))), tuple(sorted(set(ips))))

    def san(self) -> x509.SubjectAlternativeName:
        entries: list[x509.GeneralName] = [x509.DNSName(d) for d in self.dns]
        entries += [x509.IPAddress(ipaddress.ip_address(i)) for i in self.ips]
        return x509.SubjectAlternativeName(entries)


@dataclass(frozen=True)
class Pki:
    ca_cert_path: Path
    server_cert_path: Path
    server_key_path: Path
    ca_created: bool
    server_issued: bool


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise PkiError(f"{path}: not a PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PkiError(f"{path}: not a P-256 key")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as e:
        raise PkiError(f"{path}: not a PEM certificate ({e})") from None


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pub_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_or_create_ca(out: Path, grid: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, bool]:
    """The complex's CA from ``out`` (created on first use); True when created now."""
    key_path, cert_path = out / CA_KEY, out / CA_CERT
    if key_path.exists() or cert_path.exists():
        if not (key_path.exists() and cert_path.exists()):
            raise PkiError(f"half a CA in {out}: need both {CA_KEY} and {CA_CERT} (restore from backup; "
                           "a new CA would strand every installed device)")
        key, cert = _load_key(key_path), _load_cert(cert_path)
        if _pub_der(key.public_key()) != _pub_der(cert.public_key()):  # type: ignore[arg-type]
            raise PkiError(f"{CA_KEY} does not belong to {CA_CERT}")
        return key, cert, False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Metanoia Edge"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"Metanoia {grid} broker CA")])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    write_private(key_path, _key_pem(key))
    write_public(cert_path, _cert_pem(cert))
    log.info("created broker CA for grid %s in %s", grid, out)
    return key, cert, True


def _server_ok(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
               names: ServerNames) -> bool:
    if _pub_der(key.public_key()) != _pub_der(cert.public_key()):  # type: ignore[arg-type]
        return False
    if cert.issuer != ca.subject or cert.not_valid_after_utc - RENEW_BEFORE < _now():
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = ServerNames(tuple(sorted(san.get_values_for_type(x509.DNSName))),
                       tuple(sorted(str(i) for i in san.get_values_for_type(x509.IPAddress))))
    return have == names


def ensure_server_cert(out: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                       names: ServerNames, *, force: bool = False) -> bool:
    """Issue ``server.crt``/``server.key`` unless a valid one for ``names`` exists; True if issued."""
    key_path, cert_path = out / SERVER_KEY, out / SERVER_CERT
    if not force and key_path.exists() and cert_path.exists():
        try:
            if _server_ok(_load_cert(cert_path), _load_key(key_path), ca_cert, names):
                return False
        except PkiError as e:
            log.warning("re-issuing the server certificate: %s", e)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Metanoia Edge"),
                         x509.NameAttribute(NameOID.COMMON_NAME, (names.dns or names.ips)[0])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(names.san(), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_private(key_path, _key_pem(key))
    write_public(cert_path, _cert_pem(cert))
    log.info("issued broker server certificate for %s", ", ".join(names.dns + names.ips))
    return True


def ensure_pki(out: Path, grid: str, names: ServerNames, *, renew_server: bool = False) -> Pki:
    ca_key, ca_cert, created = load_or_create_ca(out, grid)
    issued = ensure_server_cert(out, ca_key, ca_cert, names, force=renew_server or created)
    return Pki(out / CA_CERT, out / SERVER_CERT, out / SERVER_KEY, created, issued)
