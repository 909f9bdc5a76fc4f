"""The auth service's cryptography, kept in one place: password hashing (Argon2id, its concurrency capped), the
encryption of signing keys at rest (AES-256-GCM under the key-encryption key), keyed hashes of usernames, signing
keys and token minting."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from itsm_shared.auth import ACCESS_TOKEN_TYPE, ALGORITHMS
from itsm_shared.settings import configured_key, key_bytes
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from auth.config import AuthSettings, get_settings
from auth.errors import Busy

# Argon2id with argon2-cffi's defaults (m=64 MiB, t=3, p=4); bcrypt only to verify and upgrade old hashes.
_hasher = PasswordHash((Argon2Hasher(), BcryptHasher()))
# Verified against when the username is unknown, so both paths cost one hash (no user enumeration by timing).
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


# ---------------------------------------------------------------- password hashing, at most N at once


class HashingSlots:
    """Caps concurrent Argon2 work (64 MiB each): `concurrency` hashes run, up to `queue` more wait (each at most
    `wait_seconds`), anything beyond is refused at once with 503 and Retry-After instead of piling up memory."""

    def __init__(self, concurrency: int, queue: int, wait_seconds: float) -> None:
        self.concurrency, self.queue, self.wait_seconds = concurrency, queue, wait_seconds
        self._slots = asyncio.Semaphore(concurrency)
        self.waiting = 0
        self.running = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self.waiting >= self.queue:
            raise Busy("too many logins at once; retry shortly")
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.wait_seconds)
        except TimeoutError:
            raise Busy("too many logins at once; retry shortly") from None
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()


_slots: HashingSlots | None = None


def hashing_slots() -> HashingSlots:
    global _slots
    if _slots is None:
        settings = get_settings()
        _slots = HashingSlots(settings.argon2_concurrency, settings.argon2_queue, settings.argon2_wait_seconds)
    return _slots


def use_hashing_slots(slots: HashingSlots | None) -> None:
    """Replace the process's slots (tests; None: built again from the settings on next use)."""
    global _slots
    _slots = slots


async def hash_password(password: str) -> str:
    async with hashing_slots().slot():
        return await anyio.to_thread.run_sync(_hasher.hash, password)


async def verify_password(password: str, stored: str | None) -> tuple[bool, str | None]:
    """(valid, new hash if the stored one should be upgraded). Runs in a worker thread, in one of the slots."""
    async with hashing_slots().slot():
        valid, updated = await anyio.to_thread.run_sync(_hasher.verify_and_update, password, stored or _DUMMY_HASH)
    return (valid and stored is not None), updated


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Refresh tokens are stored as SHA-256 digests: they are high-entropy, so a fast hash is right here."""
    return hashlib.sha256(token.encode()).hexdigest()


# ---------------------------------------------------------------- the key-encryption key


class KeyEncryptionError(RuntimeError):
    """The KEK is missing or unusable, or a stored key cannot be decrypted with the KEKs given: the service does
    not start (or cannot sign) and says which setting to fix."""


KEK_HELP = (
    "Give the auth service (and only it) a key-encryption key for its signing keys: ITSM_AUTH_KEK, or "
    "ITSM_AUTH_KEK_FILE naming a file that holds it; 32 random bytes in URL-safe base64, e.g. "
    "python -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'. "
    "Keep it: the stored signing keys cannot be read without it."
)
_ENVELOPE = "kek1"


@dataclass(frozen=True)
class KeyEncryption:
    """AES-256-GCM under the current KEK, the key's `kid` as associated data (a ciphertext moved to another row
    does not decrypt). Stored as `kek1:<KEK id>:<base64 of nonce + ciphertext>`; previous KEKs decrypt only."""

    current: bytes
    previous: tuple[bytes, ...] = ()

    @staticmethod
    def kek_id(kek: bytes) -> str:
        return hashlib.sha256(b"itsm-auth kek id" + kek).hexdigest()[:12]

    @property
    def id(self) -> str:
        return self.kek_id(self.current)

    def encrypt(self, kid: str, private_pem: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self.current).encrypt(nonce, private_pem.encode(), kid.encode())
        return f"{_ENVELOPE}:{self.id}:{base64.b64encode(nonce + sealed).decode()}"

    def encrypted_under_current(self, stored: str) -> bool:
        return stored.startswith(f"{_ENVELOPE}:{self.id}:")

    def decrypt(self, kid: str, stored: str) -> str:
        envelope, _, rest = stored.partition(":")
        kek_id, _, payload = rest.partition(":")
        if envelope != _ENVELOPE:
            raise KeyEncryptionError(f"signing key {kid}: not an encrypted key")
        kek = next((k for k in (self.current, *self.previous) if self.kek_id(k) == kek_id), None)
        if kek is None:
            raise KeyEncryptionError(
                f"signing key {kid} is encrypted under KEK {kek_id}, which this service is not given (current KEK "
                f"{self.id}). Set ITSM_AUTH_KEK to that KEK, or add it to ITSM_AUTH_KEK_PREVIOUS while rotating."
            )
        blob = base64.b64decode(payload)
        try:
            return AESGCM(kek).decrypt(blob[:12], blob[12:], kid.encode()).decode()
        except InvalidTag as exc:
            raise KeyEncryptionError(f"signing key {kid} does not decrypt under KEK {kek_id}: altered") from exc

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for another purpose, derived from the current KEK (HKDF-SHA256)."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"itsm-auth/{purpose}".encode()).derive(
            self.current
        )


def load_key_encryption(settings: AuthSettings) -> KeyEncryption:
    """The KEK from ITSM_AUTH_KEK or the file ITSM_AUTH_KEK_FILE (exactly one), with a clear error otherwise."""
    current = configured_key(
        settings.auth_kek,
        settings.auth_kek_file,
        "ITSM_AUTH_KEK",
        error=KeyEncryptionError,
        help_text=KEK_HELP,
        missing=f"no key-encryption key: ITSM_AUTH_KEK and ITSM_AUTH_KEK_FILE are unset. {KEK_HELP}",
    )
    previous: Sequence[str] = []
    if settings.auth_kek_previous is not None:
        previous = [p for p in settings.auth_kek_previous.get_secret_value().split(",") if p.strip()]
    return KeyEncryption(
        current,
        tuple(key_bytes(p, "an entry of ITSM_AUTH_KEK_PREVIOUS", KeyEncryptionError, KEK_HELP) for p in previous),
    )


_encryption: KeyEncryption | None = None


def key_encryption() -> KeyEncryption:
    """The process's KEK, read from the settings once."""
    global _encryption
    if _encryption is None:
        _encryption = load_key_encryption(get_settings())
    return _encryption


def reset_key_encryption() -> None:
    global _encryption
    _encryption = None


def username_key(username: str) -> str:
    """A keyed hash (HMAC-SHA256, key derived from the KEK) of a username: what is kept of names that are no
    account (a password typed into the username box is never stored), and the key of login throttling."""
    return hmac.new(key_encryption().derive("username-hmac"), username.encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- signing keys and tokens


def generate_signing_key() -> tuple[str, str, dict[str, Any]]:
    """(kid, private PEM, public JWK)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_jwk: dict[str, Any] = jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    kid = hashlib.sha256(public_jwk["x"].encode()).hexdigest()[:16]
    public_jwk.update({"kid": kid, "alg": ALGORITHMS[0], "use": "sig"})
    return kid, pem, public_jwk


def mint_access_token(
    *,
    kid: str,
    private_pem: str,
    issuer: str,
    audience: str,
    subject: uuid.UUID,
    roles: list[str],
    kind: str,
    name: str | None,
    ttl_seconds: int,
    issued_at: int | None = None,
) -> str:
    now = issued_at if issued_at is not None else int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": str(subject),
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
        "jti": str(uuid.uuid4()),
        "roles": roles,
        "kind": kind,
        "name": name,
    }
    return jwt.encode(claims, private_pem, algorithm=ALGORITHMS[0], headers={"kid": kid, "typ": ACCESS_TOKEN_TYPE})
