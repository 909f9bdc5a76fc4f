"""Signing secrets and signatures of the Standard Webhooks specification, and the secrets' encryption at rest.

A secret is `whsec_` + base64 of 32 random bytes; a signature is `v1,` + base64 of HMAC-SHA256, keyed with the
secret's decoded bytes, over `{webhook-id}.{webhook-timestamp}.{body}`. During a rotation both secrets sign, and
`webhook-signature` carries both signatures separated by a space.

The secrets must stay usable to sign, so they are stored recoverable: AES-256-GCM under a key that only the
webhook service is given (ITSM_WEBHOOK_SECRET_KEY or ITSM_WEBHOOK_SECRET_KEY_FILE), with the subscription id as
associated data (a ciphertext copied to another row does not decrypt). A database dump alone signs nothing."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from itsm_shared.settings import configured_key

from webhook.config import WebhookSettings, get_settings

PREFIX = "whsec_"
SECRET_BYTES = 32
_ENVELOPE = "wsk1"

KEY_HELP = (
    "Give the webhook service (and only it) the key that encrypts the signing secrets: ITSM_WEBHOOK_SECRET_KEY, "
    "or ITSM_WEBHOOK_SECRET_KEY_FILE naming a file that holds it; 32 random bytes in URL-safe base64, e.g. "
    "python -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'. "
    "Keep it: the stored secrets cannot be read without it."
)


class SecretKeyError(RuntimeError):
    """The encryption key is missing or unusable, or a stored secret does not decrypt under it."""


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of the specification, one signature per secret."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, msg_id, timestamp, body) for s in secrets_),
    }


@dataclass(frozen=True)
class SecretBox:
    key: bytes

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"itsm-webhook key id" + self.key).hexdigest()[:12]

    def seal(self, subscription_id: uuid.UUID, secret: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self.key).encrypt(nonce, secret.encode(), subscription_id.bytes)
        return f"{_ENVELOPE}:{self.key_id}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, subscription_id: uuid.UUID, stored: str) -> str:
        envelope, _, rest = stored.partition(":")
        key_id, _, payload = rest.partition(":")
        if envelope != _ENVELOPE or key_id != self.key_id:
            raise SecretKeyError(
                f"the secret of subscription {subscription_id} is encrypted under key {key_id}, not the key given "
                f"({self.key_id}). {KEY_HELP}"
            )
        blob = base64.b64decode(payload)
        try:
            return AESGCM(self.key).decrypt(blob[:12], blob[12:], subscription_id.bytes).decode()
        except InvalidTag as exc:
            raise SecretKeyError(f"the secret of subscription {subscription_id} does not decrypt: altered") from exc


def load_box(settings: WebhookSettings) -> SecretBox:
    """The key from ITSM_WEBHOOK_SECRET_KEY or the file ITSM_WEBHOOK_SECRET_KEY_FILE (exactly one)."""
    return SecretBox(
        configured_key(
            settings.webhook_secret_key,
            settings.webhook_secret_key_file,
            "ITSM_WEBHOOK_SECRET_KEY",
            error=SecretKeyError,
            help_text=KEY_HELP,
            missing=f"no key for the signing secrets: ITSM_WEBHOOK_SECRET_KEY is unset. {KEY_HELP}",
        )
    )


@functools.lru_cache
def box() -> SecretBox:
    """The service's box, from its settings (the start-up hook opens it first: a missing key stops the start)."""
    return load_box(get_settings())
