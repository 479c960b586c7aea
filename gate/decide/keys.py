"""Ed25519 key files, key ids and the trust store of public keys a gate accepts."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gate.core.errors import ConfigError

KEY_ID_BYTES = 4


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(key: Ed25519PublicKey) -> bytes:
    """The 4-byte key id: the first bytes of SHA-256 over the raw public key."""
    return hashlib.sha256(raw_public(key)).digest()[:KEY_ID_BYTES]


def generate_keypair(out_dir: Path) -> tuple[str, Path, Path]:
    """Write `<kid>.key` (0600) and `<kid>.pub` PEM files; return (key id hex, private path, public path)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    kid = key_id_of(private.public_key()).hex()
    priv_path, pub_path = out_dir / f"{kid}.key", out_dir / f"{kid}.pub"
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return kid, priv_path, pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot read an Ed25519 private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key")
    return key


def public_from_pem(data: bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: cannot read an Ed25519 public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{where}: not an Ed25519 public key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read public key: {exc.strerror}") from None
    return public_from_pem(data, str(path))


@dataclass(frozen=True)
class TrustStore:
    """Public keys by key id. Immutable: a rotation builds a new store and swaps it in."""

    keys: Mapping[bytes, Ed25519PublicKey]

    @classmethod
    def of(cls, keys: Iterable[Ed25519PublicKey]) -> TrustStore:
        return cls({key_id_of(k): k for k in keys})

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> TrustStore:
        return cls.of(load_public_key(p) for p in paths)

    def verify(self, key_id: bytes, signature: bytes, message: bytes) -> bool | None:
        """True if valid, False if forged, None if the key id is unknown."""
        key = self.keys.get(key_id)
        if key is None:
            return None
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True
