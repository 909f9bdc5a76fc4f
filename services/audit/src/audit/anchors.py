"""Anchors: the chain signed with a key the database does not hold (README, Audit; issue #11, finding 15).

The hash chain alone proves nothing against whoever can write the table: the owner of `audit_event` can switch
its triggers off, change a record and recompute every hash after it, and the chain is consistent again. So the
writer also signs each batch it appends, in the same transaction: an anchor `(seq, from_seq, kid, signature)`,
the Ed25519 signature of

    itsm-audit-anchor:<from_seq>:<seq>:<hash of record seq>

by the anchor key, which only the audit service holds (ITSM_AUDIT_ANCHOR_KEY or ITSM_AUDIT_ANCHOR_KEY_FILE): not
the database, not the migration job, not the other services. `hash(seq)` covers every record up to `seq`, and the
anchors cover the chain end to end ([1, a1], [a1 + 1, a2], ...), so a rewrite shows either as a signature that
no longer matches the recomputed hash or as records no anchor covers (when the anchors are deleted with it).
Anyone with the public key (`GET /api/v1/audit/anchor-keys`) checks the anchors of an export without us.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from itsm_shared.settings import configured_key

from audit.config import AuditSettings, get_settings
from audit.errors import AnchorKeyError

CONTEXT = "itsm-audit-anchor"
KEY_HELP = (
    "Generate one with python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())' "
    "and give it to the audit service only, in ITSM_AUDIT_ANCHOR_KEY or in the file ITSM_AUDIT_ANCHOR_KEY_FILE."
)


def message(from_seq: int, seq: int, digest: str) -> bytes:
    """What an anchor signs: the stretch of the chain it was written with, and the hash the chain had at its end."""
    return f"{CONTEXT}:{from_seq}:{seq}:{digest}".encode()


def encode(raw: bytes) -> str:
    """URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))


def key_id(public: bytes) -> str:
    """The anchor key's id: the first 16 hex digits of SHA-256 of its raw 32-byte public key."""
    return hashlib.sha256(public).hexdigest()[:16]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class Anchor:
    from_seq: int
    seq: int
    kid: str
    signature: str


@dataclass(frozen=True)
class AnchorKeys:
    """The key that signs new anchors, and every public key whose anchors still verify (by key id)."""

    signing: Ed25519PrivateKey
    kid: str
    verifying: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)

    @classmethod
    def of(cls, seed: bytes, former: Sequence[bytes] = ()) -> AnchorKeys:
        signing = Ed25519PrivateKey.from_private_bytes(seed)
        public = signing.public_key()
        keys = {key_id(raw): Ed25519PublicKey.from_public_bytes(raw) for raw in former}
        kid = key_id(_raw_public(public))
        keys[kid] = public
        return cls(signing=signing, kid=kid, verifying=keys)

    def sign(self, from_seq: int, seq: int, digest: str) -> Anchor:
        signature = self.signing.sign(message(from_seq, seq, digest))
        return Anchor(from_seq=from_seq, seq=seq, kid=self.kid, signature=encode(signature))

    def check(self, from_seq: int, seq: int, digest: str, kid: str, signature: str) -> str | None:
        """None when the anchor holds for this hash; else why not."""
        key = self.verifying.get(kid)
        if key is None:
            return f"anchor signed by an unknown key ({kid})"
        try:
            key.verify(decode(signature), message(from_seq, seq, digest))
        except (InvalidSignature, binascii.Error, ValueError):
            return "anchor signature does not match"
        return None

    def public_keys(self) -> list[tuple[str, str, bool]]:
        """(key id, public key in URL-safe base64, whether it signs new anchors), the current key first."""
        listed = sorted(self.verifying.items(), key=lambda item: item[0] != self.kid)
        return [(kid, encode(_raw_public(key)), kid == self.kid) for kid, key in listed]


def load_anchor_keys(settings: AuditSettings) -> AnchorKeys:
    """The anchor key from ITSM_AUDIT_ANCHOR_KEY or the file ITSM_AUDIT_ANCHOR_KEY_FILE (exactly one), plus the
    former public keys of ITSM_AUDIT_ANCHOR_PUBLIC_KEYS; a clear error otherwise."""
    seed = configured_key(
        settings.audit_anchor_key,
        settings.audit_anchor_key_file,
        "ITSM_AUDIT_ANCHOR_KEY",
        error=AnchorKeyError,
        help_text=KEY_HELP,
        missing=(
            "no anchor key: ITSM_AUDIT_ANCHOR_KEY and ITSM_AUDIT_ANCHOR_KEY_FILE are unset; the audit log signs "
            f"every batch it appends with it. {KEY_HELP}"
        ),
    )
    former: list[bytes] = []
    for entry in settings.audit_anchor_public_keys.split(","):
        if entry.strip():
            try:
                former.append(decode(entry))
            except (binascii.Error, ValueError):
                former.append(b"")
            if len(former[-1]) != 32:
                raise AnchorKeyError(f"ITSM_AUDIT_ANCHOR_PUBLIC_KEYS: {entry!r} is not a 32-byte public key")
    try:
        return AnchorKeys.of(seed, former)
    except ValueError as exc:
        raise AnchorKeyError(f"ITSM_AUDIT_ANCHOR_PUBLIC_KEYS: not an Ed25519 public key: {exc}") from exc


_keys: AnchorKeys | None = None


def anchor_keys() -> AnchorKeys:
    """The process's anchor keys, read from the settings once (at start: `ingest.prepare`)."""
    global _keys
    if _keys is None:
        _keys = load_anchor_keys(get_settings())
    return _keys


def reset_anchor_keys() -> None:
    global _keys
    _keys = None
