"""Streamed copies between two SeaweedFS servers: moved in the kernel when nothing needs to see the bytes."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ferry.engine.budget import MemoryBudget
from ferry.engine.compare import ConsistencyCheck
from ferry.engine.copier import Copier, CopyOptions
from ferry.objects import ObjectMeta
from ferry.sandbox import SeaweedServer
from ferry.storage import splice
from ferry.storage.base import Backend
from ferry.storage.profiles import get_profile
from ferry.storage.s3 import S3Backend
from ferry.storage.wrappers import BandwidthLimiter, RetryingBackend, ThrottledBackend

MiB = 1024 * 1024
pytestmark = [pytest.mark.both_loops, pytest.mark.skipif(not splice.AVAILABLE, reason="no splice here")]


@pytest.fixture
async def pair(seaweed_a: SeaweedServer, seaweed_b: SeaweedServer,
               bucket_factory: Any) -> AsyncIterator[tuple[S3Backend, S3Backend]]:
    profile = get_profile("seaweedfs")
    src = S3Backend(seaweed_a.endpoint, seaweed_a.region, seaweed_a.access_key, seaweed_a.secret_key,
                    bucket_factory(seaweed_a), profile=profile)
    dst = S3Backend(seaweed_b.endpoint, seaweed_b.region, seaweed_b.access_key, seaweed_b.secret_key,
                    bucket_factory(seaweed_b), profile=profile)
    yield src, dst
    await src.close()
    await dst.close()


def _copier(src: Backend, dst: Backend, check: ConsistencyCheck) -> Copier:
    opts = CopyOptions(consistency=check, stream_threshold=1 * MiB, multipart_threshold=64 * MiB)
    return Copier(src, dst, opts, MemoryBudget(64 * MiB))


async def _put(backend: S3Backend, key: str, data: bytes) -> None:
    await backend.put(key, data, ObjectMeta(content_type="application/x-ferry"))


@pytest.mark.parametrize("key", ["plain.bin", "ü ñ/+%#?.bin"])
async def test_a_streamed_copy_moves_in_the_kernel_and_arrives_whole(
    pair: tuple[S3Backend, S3Backend], moves: list[int], key: str,
) -> None:
    src, dst = pair
    data = os.urandom(5 * MiB + 7)
    await _put(src, key, data)
    listed = await src.head(key)
    copier = _copier(RetryingBackend(src), RetryingBackend(dst), ConsistencyCheck.SIZE_LAST_MODIFIED)
    outcome = await copier.copy(listed)
    assert outcome.method == "stream" and moves == [len(data)]
    info, got = await dst.read_object(key)
    assert got == data and info.meta.content_type == "application/x-ferry"
    assert outcome.etag == hashlib.md5(data).hexdigest()  # the destination checked the Content-MD5 sent
    # The source's connection went back to its pool in step: the next request on it works.
    assert (await src.read_object(key))[1] == data


class Reports:
    def __init__(self) -> None:
        self.added: list[int] = []
        self.restarts = 0

    def add(self, n: int) -> None:
        self.added.append(n)

    def restart(self) -> None:
        self.restarts += 1


async def test_a_kernel_move_reports_its_bytes_as_they_go(pair: tuple[S3Backend, S3Backend], moves: list[int]) -> None:
    src, dst = pair
    data = os.urandom(3 * splice.PROGRESS_STEP + 5)
    await _put(src, "k", data)
    copier = _copier(RetryingBackend(src), RetryingBackend(dst), ConsistencyCheck.SIZE_LAST_MODIFIED)
    reports = Reports()
    outcome = await copier.copy(await src.head("k"), reports)
    assert outcome.method == "stream" and moves == [len(data)]
    # In steps, each already on the event loop when the copy returned; the one attempt started from zero.
    assert sum(reports.added) == len(data) and len(reports.added) >= 3 and reports.restarts == 1


async def test_a_crc64_check_sees_every_byte_so_nothing_moves_in_the_kernel(
    pair: tuple[S3Backend, S3Backend], moves: list[int],
) -> None:
    src, dst = pair
    data = os.urandom(3 * MiB)
    await _put(src, "k", data)
    copier = _copier(src, dst, ConsistencyCheck.CRC64)
    await copier.copy(await src.head("k"))
    assert moves == [] and (await dst.read_object("k"))[1] == data
    assert (await dst.head("k")).crc64 is not None


@pytest.mark.parametrize("limit", [None, 64 * MiB])
async def test_a_bandwidth_limit_charges_the_bytes_so_they_do_not_move_in_the_kernel(
    pair: tuple[S3Backend, S3Backend], moves: list[int], limit: float | None,
) -> None:
    src, dst = pair
    data = os.urandom(2 * MiB)
    await _put(src, "k", data)
    limiter = BandwidthLimiter(limit)
    copier = _copier(ThrottledBackend(src, limiter), ThrottledBackend(dst, limiter),
                     ConsistencyCheck.SIZE_LAST_MODIFIED)
    await copier.copy(await src.head("k"))
    assert (await dst.read_object("k"))[1] == data
    assert moves == ([len(data)] if limit is None else [])


async def test_a_kernel_that_refuses_splice_costs_one_retry_then_bytes_go_through_python(
    pair: tuple[S3Backend, S3Backend], moves: list[int], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sandbox (seccomp, gVisor) may refuse splice on sockets at run time: the object is sent again the
    ordinary way, and no later object tries."""
    src, dst = pair
    monkeypatch.setattr(splice, "_refused", False)

    def refused(*args: Any, **kwargs: Any) -> int:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "splice", refused)
    # Larger than what a stream buffers before pausing (2 MiB), so most of each body is still in its socket
    # when the move starts: a body received whole needs no splice (uvloop reads in large pieces).
    data = [os.urandom(8 * MiB + n) for n in range(2)]
    for n, body in enumerate(data):
        await _put(src, f"k{n}", body)
    copier = _copier(RetryingBackend(src, base_delay=0.01), RetryingBackend(dst, base_delay=0.01),
                     ConsistencyCheck.SIZE_LAST_MODIFIED)
    for n, body in enumerate(data):
        await copier.copy(await src.head(f"k{n}"))
        assert (await dst.read_object(f"k{n}"))[1] == body
    assert moves == [len(data[0])] and not splice.usable()  # one attempt, then none
    assert "refused to splice" in caplog.text
