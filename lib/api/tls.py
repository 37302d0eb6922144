"""TLS for an API reachable from other machines (`--allow-remote-ipc`): a bearer token must
never cross a network in clear. The daemon makes a self-signed certificate on first use
(DATA_DIR/ipc.crt and ipc.key, 0600) and prints its SHA-256 fingerprint; clients pin that
fingerprint (`chatp2pctl --pin`, or run.json for a client on the same machine) instead of
trusting any authority.
"""

from __future__ import annotations

import datetime
import hashlib
import pathlib
import ssl

from ..util import write_private_file

CERT_FILE = "ipc.crt"
KEY_FILE = "ipc.key"
VALIDITY_DAYS = 3650


def ensure_certificate(data_dir: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(certificate, key) paths, made on first use: ECDSA P-256, self-signed."""
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chatp2p daemon")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
            .sign(key, hashes.SHA256()))
    write_private_file(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    write_private_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def fingerprint_of(der: bytes) -> str:
    """The pin of a certificate: SHA-256 of its DER bytes, 64 lowercase hex digits."""
    return hashlib.sha256(der).hexdigest()


def certificate_fingerprint(cert_path: pathlib.Path) -> str:
    return fingerprint_of(ssl.PEM_cert_to_DER_cert(cert_path.read_text()))


def normalize_pin(text: str) -> str:
    """A pin as people paste it: any case, with or without ':' or spaces, 'sha256:' allowed."""
    pin = text.strip().lower().removeprefix("sha256:").replace(":", "").replace(" ", "")
    if len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin):
        raise ValueError("a certificate pin is the SHA-256 fingerprint: 64 hexadecimal digits")
    return pin


def server_context(cert_path: pathlib.Path, key_path: pathlib.Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_path), str(key_path))
    return context


def client_context() -> ssl.SSLContext:
    """No authority and no host name: the pin is the whole check (`check_pin` after the
    handshake, before anything is sent)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
