"""The vendors' archive-restore requests as data, and how a HEAD says a restore stands.

- `s3`: `POST /key?restore` with a `RestoreRequest` XML body (AWS, and the S3 APIs of OBS, OSS, COS, KS3, US3);
- `bce`: Baidu BOS, `POST /key?restore` with no body, the days in `x-bce-restore-days` (at most 30) and the
  tier in `x-bce-restore-tier` (Expedited, Standard or LowCost);
- `qiniu`: Qiniu Kodo's native `POST /restoreAr/<urlsafe base64 of "bucket:key">/freezeAfterDays/<1..7>` on the
  region's rs host, signed with Qiniu's MAC (`Authorization: QBox <ak>:<urlsafe base64 HMAC-SHA1>` of the path
  and a newline), as its SDKs send it: its S3 API has no RestoreObject anyone vouches for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Final

from ferry.objects import Restore

S3_TIER: Final = "Standard"
BCE_MAX_DAYS: Final = 30
QINIU_MAX_DAYS: Final = 7
_ONGOING = re.compile(r'ongoing-request\s*=\s*"?(true|false)"?', re.IGNORECASE)
FORM: Final = "application/x-www-form-urlencoded"


def s3_body(days: int, tier: str = S3_TIER) -> bytes:
    """The RestoreRequest of an S3-style restore."""
    return (f"<RestoreRequest><Days>{max(int(days), 1)}</Days><GlacierJobParameters><Tier>{tier}</Tier>"
            "</GlacierJobParameters></RestoreRequest>").encode()


def bce_headers(days: int, tier: str = S3_TIER) -> dict[str, str]:
    """The headers of a Baidu BOS restore (no body)."""
    return {"x-bce-restore-days": str(min(max(int(days), 1), BCE_MAX_DAYS)), "x-bce-restore-tier": tier}


def qiniu_entry(bucket: str, key: str) -> str:
    """Qiniu's EncodedEntryURI: URL-safe base64 (padding kept, as its SDKs do) of `bucket:key`."""
    return base64.urlsafe_b64encode(f"{bucket}:{key}".encode()).decode("ascii")


def qiniu_restore_path(bucket: str, key: str, days: int) -> str:
    return f"/restoreAr/{qiniu_entry(bucket, key)}/freezeAfterDays/{min(max(int(days), 1), QINIU_MAX_DAYS)}"


def qiniu_authorization(access_key: str, secret_key: str, target: str, body: bytes = b"",
                        content_type: str | None = FORM) -> str:
    """`QBox <ak>:<sign>`: the HMAC-SHA1 of the path (with `?query`) and a newline, and of a form body."""
    data = target.encode() + b"\n" + (body if body and content_type == FORM else b"")
    digest = hmac.new(secret_key.encode(), data, hashlib.sha1).digest()
    return f"QBox {access_key}:{base64.urlsafe_b64encode(digest).decode('ascii')}"


def restore_state(value: str | None) -> Restore | None:
    """`ongoing-request="true"` -> ONGOING, `="false"` (with an expiry date) -> DONE; None otherwise."""
    if not value:
        return None
    m = _ONGOING.search(value)
    if m is None:
        return None
    return Restore.ONGOING if m.group(1).lower() == "true" else Restore.DONE
