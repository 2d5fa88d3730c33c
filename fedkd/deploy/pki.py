"""TLS material and SuperNode keys for a secure deployment, made with `cryptography`.

Owns: the local CA and the SuperLink's server certificate for 127.0.0.1/localhost (reused while
valid), the SuperNodes' OpenSSH key pairs, owner-only private key files, and the check that the
certificates folder can be written. Must not touch: processes, ports, Flower; it only writes files
in the folders it is given. `cryptography` is imported inside the functions, so that `fedkd --help`
does not pay for it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fedkd.errors import UsageError


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # given to SuperNodes and to `flwr` as root certificate
    server_cert: Path  # the SuperLink's certificate for 127.0.0.1 and localhost, signed by the CA
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    private: Path  # OpenSSH EC private key, for `flower-supernode --auth-supernode-private-key`
    public: Path  # OpenSSH public key, enrolled with `flwr supernode register`


# ---- the CA and the server certificate ----------------------------------------------------------

def write_tls_files(folder: Path, now: datetime.datetime | None = None, days: int = 365) -> TlsFiles:
    """Make a CA and a server certificate for 127.0.0.1/localhost signed by it, in `folder`.

    Existing files are kept when the server certificate is still valid at `now`, so a folder can be
    reused across deployments; otherwise all four files are written afresh.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    files = TlsFiles(folder / "ca.crt", folder / "server.crt", folder / "server.key")
    if _tls_files_valid(files, now):
        return files
    ca_key, ca_cert = _make_ca(now, days)
    server_key, server_cert = _make_server_certificate(ca_key, ca_cert, now, days)
    folder.mkdir(parents=True, exist_ok=True)
    _write_private(folder / "ca.key", _pem_private_key(ca_key))  # kept so the CA can sign again later
    _write_private(files.server_key, _pem_private_key(server_key))
    files.ca_cert.write_bytes(_pem_certificate(ca_cert))
    files.server_cert.write_bytes(_pem_certificate(server_cert))
    return files


def _tls_files_valid(files: TlsFiles, now: datetime.datetime) -> bool:
    from cryptography import x509

    if not all(p.is_file() for p in (files.ca_cert, files.server_cert, files.server_key)):
        return False
    try:
        ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        server.verify_directly_issued_by(ca)
    except (ValueError, TypeError, OSError):
        return False
    return all(c.not_valid_before_utc <= now < c.not_valid_after_utc for c in (ca, server))


def _make_ca(now: datetime.datetime, days: int):
    """A self-signed CA (EC P-256) that may sign end-entity certificates only; (key, certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(_name("fedkd local CA"), _name("fedkd local CA"), key.public_key(), now, days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _make_server_certificate(ca_key, ca_cert, now: datetime.datetime, days: int):
    """A TLS server certificate (EC P-256) for 127.0.0.1 and localhost, signed by the CA; (key, certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (_builder(_name("127.0.0.1"), ca_cert.subject, key.public_key(), now, days)
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=True,
                                         key_cert_sign=False, crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedkd local deployment"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject, issuer, public_key, now: datetime.datetime, days: int):
    """What both certificates share: names, key, a random serial, the validity window, the key id."""
    from cryptography import x509

    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


# ---- SuperNode keys -----------------------------------------------------------------------------

def node_keys(folder: Path, count: int) -> list[NodeKey]:
    """`count` SuperNode key pairs in `folder` (node-<i>.key / node-<i>.pub); missing ones are made."""
    keys = []
    for i in range(count):
        key = NodeKey(folder / f"node-{i}.key", folder / f"node-{i}.pub")
        if not (key.private.is_file() and key.public.is_file()):
            write_node_key(key)
        keys.append(key)
    return keys


def write_node_key(key: NodeKey) -> NodeKey:
    """A fresh EC P-384 key pair in OpenSSH format (what flower-supernode and `flwr supernode register` read)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat,
                                                              PublicFormat)

    private = ec.generate_private_key(ec.SECP384R1())
    key.private.parent.mkdir(parents=True, exist_ok=True)
    _write_private(key.private, private.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    key.public.write_bytes(private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH) + b"\n")
    return key


# ---- files --------------------------------------------------------------------------------------

def _pem_private_key(key) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _pem_certificate(cert) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to a file only its owner can read (mode 0600 from the start, never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_node_configs(folder: Path, count: int) -> list[Path]:
    """Each SuperNode's --node-config as a TOML file only its owner can read: its partition id, and
    the secure-aggregation roster (every node's Ed25519 identity public key by partition id) with
    its own identity private key, so that keys relayed by the server are checked against the
    identity that signed them (roster mode: `fedkd.apps.secure.node_roster`). A fresh identity per
    node and deployment; the private keys never leave their file."""
    import tomli_w
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    keys = [Ed25519PrivateKey.generate() for _ in range(count)]
    roster = ",".join(f"{i}:{k.public_key().public_bytes_raw().hex()}" for i, k in enumerate(keys))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, key in enumerate(keys):
        path = folder / f"node-{i}.toml"
        _write_private(path, tomli_w.dumps({
            "partition-id": i, "num-partitions": count,
            "secagg-identity-key": key.private_bytes_raw().hex(), "secagg-roster": roster}).encode())
        paths.append(path)
    return paths


def check_writable(folder: Path) -> None:
    """Raise UsageError (one line) unless `folder` exists or can be made, and takes files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"certs dir '{folder}' is not writable: {exc.strerror or exc}") from None
