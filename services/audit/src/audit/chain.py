"""The hash chain, in the exact form a third party reproduces (README, "Audit"). Standard library only.

    hash(n) = hex(SHA-256(hash(n-1) + canonical({"event": ..., "event_id": ..., "received_at": ..., "seq": n})))

`hash(0)` is 64 zeros; `+` joins the 64 ASCII hex characters of the previous hash and the UTF-8 bytes of the
canonical JSON. Canonical JSON: object keys sorted by code point, no whitespace (`,` and `:` separators),
non-ASCII characters as UTF-8 rather than escaped, integers as plain digits, other numbers as Python's
`repr(float)`; exactly `json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`.
`received_at` is UTC, `YYYY-MM-DDTHH:MM:SS.ffffffZ` (always six fractional digits); `event_id` the lowercase
hyphenated UUID; `event` the CloudEvent as stored (and as exported).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def format_received_at(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_hash(prev_hash: str, seq: int, event_id: str, received_at: str, canonical_event: str) -> str:
    """`canonical_event` is `canonical_json(event)`. The record's keys are in sorted order already
    (event < event_id < received_at < seq), so joining the parts is canonical_json of the record, only cheaper."""
    record = f'{{"event":{canonical_event},"event_id":"{event_id}","received_at":"{received_at}","seq":{seq}}}'
    return hashlib.sha256((prev_hash + record).encode("utf-8")).hexdigest()
