"""Encryption of token records at rest in Redis (AES-256-GCM from ``cryptography``).

Threat model: whoever can read Redis (a shared instance, a backup, an RDB/AOF file, a
``MONITOR`` session) must not obtain a usable access or refresh token, nor move a record
from one credential or generation to another. Each record is sealed with AES-GCM under a
key the user supplies (never stored in Redis); the associated data binds it to the
credential key and the generation, so a record copied to another credential's key or
replayed as another generation fails to open. Whoever holds the key *and* can write Redis
can still replace tokens: Redis access control (ACL user, TLS, a private network) guards
that, not this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import UsageError
from .errors import CLEAR_TOKENS, SharedStateUnreadable

__all__ = ["TokenCipher", "generate_key", "key_id"]

_VERSION = b"\x01"
_NONCE = 12  # bytes: the size AES-GCM is specified for (NIST SP 800-38D)


def generate_key() -> str:
    """A new random 256-bit key, URL-safe base64 (put it in a secret store, not in the config file)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def key_id(key: bytes) -> str:
    """A short public name of a 32-byte key: the same on every process holding it, useless to find the key.

    An HMAC of a fixed label under the key (the key itself is 256 random bits: nothing to guess from 64
    bits of a keyed digest), so that a record and a process can say which key they use without showing it.
    """
    return hmac.new(key, b"oauthpw-fleet-key-id", hashlib.sha256).hexdigest()[:16]


def _key_bytes(key: str | bytes) -> bytes:
    if isinstance(key, bytes) and len(key) == 32:
        return key
    text = key.decode() if isinstance(key, bytes) else key
    try:
        raw = base64.urlsafe_b64decode(text.strip().encode())
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise UsageError(
            "a fleet token key must be 32 random bytes, or their URL-safe base64 (44 characters); "
            "make one with oauthpw_async.fleet.generate_key()"
        )
    return raw


class TokenCipher:
    """Seals and opens token records with AES-256-GCM.

    Args:
        keys: the current key first, then older keys still accepted for reading (key rotation:
            add the new key in front, and drop the old one once every record was rewritten).
    """

    __slots__ = ("_aeads", "key_ids")

    def __init__(self, keys: str | bytes | Sequence[str | bytes]) -> None:
        listed = [keys] if isinstance(keys, str | bytes) else list(keys)
        if not listed:
            raise UsageError("TokenCipher needs at least one key")
        raw = [_key_bytes(k) for k in listed]
        self._aeads = [AESGCM(k) for k in raw]
        #: A public name of each key, current first (:func:`key_id`): records say which key sealed them.
        self.key_ids: tuple[str, ...] = tuple(key_id(k) for k in raw)

    def __repr__(self) -> str:
        return f"TokenCipher(<{len(self._aeads)} key(s)>, key_id={self.key_id!r})"

    @property
    def key_id(self) -> str:
        """The public name of the current key (the one :meth:`seal` uses)."""
        return self.key_ids[0]

    @staticmethod
    def associated_data(credential_key: str, generation: int) -> bytes:
        """What a record is bound to: its credential and its generation."""
        return f"oauthpw-fleet-token\0{credential_key}\0{generation}".encode()

    def seal(self, plaintext: bytes, *, credential_key: str, generation: int) -> bytes:
        """Encrypt ``plaintext`` for ``credential_key`` at ``generation`` with the current key."""
        return self.seal_for(plaintext, self.associated_data(credential_key, generation))

    def seal_for(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt ``plaintext`` bound to ``associated_data`` (what the record may not be moved away from)."""
        nonce = os.urandom(_NONCE)  # random 96-bit nonces: safe for far more records than a fleet writes
        return _VERSION + nonce + self._aeads[0].encrypt(nonce, plaintext, associated_data)

    def open_for(self, blob: bytes, associated_data: bytes) -> bytes | None:
        """Decrypt what :meth:`seal_for` sealed with ``associated_data``; ``None`` if no key opens it."""
        if len(blob) < 1 + _NONCE + 16 or blob[:1] != _VERSION:
            return None
        nonce, body = blob[1 : 1 + _NONCE], blob[1 + _NONCE :]
        for aead in self._aeads:
            try:
                return aead.decrypt(nonce, body, associated_data)
            except InvalidTag:
                continue
        return None

    def open(self, blob: bytes, *, credential_key: str, generation: int) -> bytes:
        """Decrypt a sealed record, trying each key in turn.

        Raises:
            SharedStateUnreadable: no key opens it (another key, another credential or generation,
                or a damaged record).
        """
        if len(blob) < 1 + _NONCE + 16 or blob[:1] != _VERSION:
            raise SharedStateUnreadable(f"the shared token record is damaged or of an unknown format; {CLEAR_TOKENS}")
        plaintext = self.open_for(blob, self.associated_data(credential_key, generation))
        if plaintext is None:
            raise SharedStateUnreadable(
                "the shared token record cannot be opened with the configured key(s): every process of a fleet "
                "needs the same token key (after a key change, list the old key after the new one); "
                f"{CLEAR_TOKENS}"
            )
        return plaintext
