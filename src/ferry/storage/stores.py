"""Open one bucket of a cloud from where it is and the keys to it: the one seam through which migration tasks,
task groups, sync tasks and the bucket helpers open their stores, whatever the store speaks.

Which code talks to a cloud is data: its profile's `backend` (storage/profiles.json). S3-speaking clouds are
opened here; every other kind names, in `_OPENERS`, the module whose `open_at(at, keys)` builds its Backend, so a
new kind of store is one module and one line here, and nothing above this layer changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ferry.errors import UsageError
from ferry.storage.base import Backend, ListOrder
from ferry.storage.profiles import Profile, get_profile

__all__ = ["StoreAt", "StoreKeys", "open_at", "store_profile"]

# backend kind (a profile's `backend`) -> the module whose `open_at(at: StoreAt, keys: StoreKeys) -> Backend`
# opens it; imported on use, so a run between S3 stores never loads another kind's code.
_OPENERS: Final[Mapping[str, str]] = {"azure": "ferry.storage.azure", "gcs": "ferry.storage.gcs"}


@dataclass(frozen=True, slots=True)
class StoreAt:
    """Where a store is: the profile's name, the endpoint URL (None: the profile's public one for the region),
    region, the bucket's full name and a key prefix. `from_override` marks an endpoint from the operator's
    table, i.e. some self-hosted store whose listing order nobody vouched for."""

    profile: str
    endpoint: str | None
    region: str
    bucket: str
    prefix: str = ""
    from_override: bool = False
    sse_kms_key_id: str | None = None  # writes ask for server-side encryption under this KMS key


@dataclass(frozen=True, slots=True)
class StoreKeys:
    """The credentials of one store, in whichever form its kind takes them; never shown."""

    ak: str | None = None
    sk: str | None = None
    security_token: str | None = None
    connection_string: str | None = None  # Azure: the storage account's connection string
    json_auth: str | None = None  # Google: a service account's JSON key file, as text

    def __repr__(self) -> str:
        given = [name for name in self.__slots__ if getattr(self, name)]
        return f"StoreKeys(<{', '.join(given) or 'none'} given>)"

    __str__ = __repr__

    @classmethod
    def of(cls, secrets: Mapping[str, Any], side: str) -> StoreKeys:
        """The keys of `side` ("src" or "dst") in a task's unsealed secrets (`src_ak`, `src_sk`, ...)."""
        return cls(*(secrets.get(f"{side}_{name}") or None for name in cls.__slots__))


def store_profile(at: StoreAt) -> Profile:
    """The profile `at` names; an operator-mapped endpoint lists in no order we can vouch for, and the planner
    then sorts the listing itself, which is correct for any store."""
    profile = get_profile(at.profile)
    return profile.replace(list_order=ListOrder.UNORDERED) if at.from_override else profile


def open_at(at: StoreAt, keys: StoreKeys) -> Backend:
    """The Backend for the store `at`; UsageError when the keys do not suit its kind."""
    profile = store_profile(at)
    if profile.backend != "s3":
        module = _OPENERS.get(profile.backend)
        if module is None:
            raise UsageError(f"{profile.title} cannot be opened by this version of Ferry")
        opened: Backend = importlib.import_module(module).open_at(at, keys)
        return opened
    if not keys.ak or not keys.sk:
        raise UsageError(f"{profile.title} needs an access key and a secret key")
    from ferry.storage.s3 import S3Backend

    return S3Backend(at.endpoint, at.region, keys.ak, keys.sk, at.bucket, at.prefix, profile,
                     security_token=keys.security_token, sse_kms_key_id=at.sse_kms_key_id)
