"""Each vendor's restore request as its documentation shapes it, checked by a local fake of that vendor:
Baidu BOS's `x-bce-restore-*` headers, Qiniu's MAC-signed `restoreAr`, and the restore status a HEAD reports."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from ferry.errors import AccessError
from ferry.objects import ObjectMeta, Restore
from ferry.storage.profiles import get_profile
from ferry.storage.restore_calls import restore_state
from ferry.storage.s3 import S3Backend

AK, SK = "AKIDFERRY", "qiniu-secret/+key"


@dataclass
class Vendor:
    """A loopback server checking requests as a vendor documents them; `refusals` lists what it refused."""

    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    head_headers: dict[str, str] = field(default_factory=dict)
    port: int = 0

    def refuse(self, why: str) -> web.Response:
        self.refusals.append(why)
        return web.Response(status=400, text=why)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.seen.append((request.method, request.path_qs, headers, body))
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": "0", "ETag": '"e"', **self.head_headers})
        if request.path.startswith("/restoreAr/"):
            return self.qiniu(request, headers, body)
        if request.method == "POST" and "restore" in request.query:
            return self.bce(headers, body)
        if request.method == "PUT":
            if "aws-chunked" in headers.get("content-encoding", "") or "x-amz-trailer" in headers or \
                    headers.get("x-amz-content-sha256", "").startswith("STREAMING"):
                return self.refuse("BOS does not take aws-chunked payloads")
            return web.Response(headers={"ETag": '"e"'})
        return self.refuse(f"unexpected {request.method} {request.path_qs}")

    def bce(self, headers: dict[str, str], body: bytes) -> web.Response:
        # BOS RestoreObject: no body; days 1..30 in x-bce-restore-days; tier Expedited|Standard|LowCost.
        days = headers.get("x-bce-restore-days", "")
        if body or not days.isdigit() or not 1 <= int(days) <= 30:
            return self.refuse(f"bad days {days!r} or a body")
        if headers.get("x-bce-restore-tier") not in ("Expedited", "Standard", "LowCost"):
            return self.refuse("bad tier")
        if not headers.get("authorization", "").startswith("AWS4-HMAC-SHA256 "):
            return self.refuse("unsigned")
        return web.Response(status=200)

    def qiniu(self, request: web.Request, headers: dict[str, str], body: bytes) -> web.Response:
        # restoreAr: POST /restoreAr/<EncodedEntryURI>/freezeAfterDays/<1..7>, Authorization QBox ak:sign where
        # sign = urlsafe_base64(hmac_sha1(sk, path + "\n")) for an empty form body.
        parts = request.path.split("/")
        if request.method != "POST" or len(parts) != 5 or parts[3] != "freezeAfterDays":
            return self.refuse("bad path")
        if not 1 <= int(parts[4]) <= 7:
            return self.refuse("freezeAfterDays out of 1..7")
        bucket, _, _ = base64.urlsafe_b64decode(parts[2]).decode().partition(":")
        if not bucket:
            return self.refuse("bad entry")
        want = hmac.new(SK.encode(), request.path_qs.encode() + b"\n", hashlib.sha1).digest()
        if headers.get("authorization") != f"QBox {AK}:{base64.urlsafe_b64encode(want).decode()}":
            return web.Response(status=401, text='{"error": "bad token"}')
        if headers.get("content-type") != "application/x-www-form-urlencoded" or body:
            return self.refuse("not an empty form")
        return web.Response(status=200, text="{}")


@pytest.fixture
async def vendor() -> AsyncIterator[Vendor]:
    state = Vendor()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    yield state
    await runner.cleanup()


def _backend(vendor: Vendor, cloud: str, sk: str = SK, **changes: Any) -> S3Backend:
    profile = get_profile(cloud).replace(**changes)
    return S3Backend(f"http://127.0.0.1:{vendor.port}", None, AK, sk, "bkt", "pre/", profile)


async def test_baidu_restore_sends_the_bce_headers_and_no_body(vendor: Vendor) -> None:
    b = _backend(vendor, "baidu")
    try:
        await b.restore("cold key", days=45)
    finally:
        await b.close()
    assert not vendor.refusals
    method, path, headers, body = vendor.seen[-1]
    assert (method, path, body) == ("POST", "/bkt/pre/cold%20key?restore=", b"")
    assert headers["x-bce-restore-days"] == "30" and headers["x-bce-restore-tier"] == "Standard"


async def test_baidu_never_streams_aws_chunked_even_when_asked(vendor: Vendor) -> None:
    b = _backend(vendor, "baidu")

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"

    try:
        out = await b.put_stream("k", 3, body, ObjectMeta(), trailing_crc32c=True)  # type: ignore[arg-type]
    finally:
        await b.close()
    assert not vendor.refusals and not out.crc32c_verified


async def test_qiniu_restore_is_restoreAr_signed_with_its_mac(vendor: Vendor) -> None:
    hosts = {"*": f"http://127.0.0.1:{vendor.port}"}
    b = _backend(vendor, "qiniu", restore_hosts=hosts)
    try:
        await b.restore("a/ü", days=30)
    finally:
        await b.close()
    assert not vendor.refusals
    method, path, _, _ = vendor.seen[-1]
    entry = base64.urlsafe_b64encode("bkt:pre/a/ü".encode()).decode()
    assert (method, path) == ("POST", f"/restoreAr/{entry}/freezeAfterDays/7")
    wrong = _backend(vendor, "qiniu", sk="not-the-key", restore_hosts=hosts)
    try:
        with pytest.raises(AccessError):
            await wrong.restore("a", days=1)
    finally:
        await wrong.close()
    assert "not-the-key" not in repr(wrong) and SK not in repr(b)


@pytest.mark.parametrize("cloud,header", [("baidu", "x-bce-restore"), ("aliyun", "x-oss-restore"),
                                          ("aws", "x-amz-restore"), ("huaweicloud", "x-obs-restore")])
async def test_head_reports_how_a_restore_stands(vendor: Vendor, cloud: str, header: str) -> None:
    b = _backend(vendor, cloud)
    try:
        assert (await b.head("k")).restore is None
        vendor.head_headers = {header: 'ongoing-request="true"'}
        assert (await b.head("k")).restore is Restore.ONGOING
        vendor.head_headers = {header: 'ongoing-request="false", expiry-date="Fri, 23 Dec 2012 00:00:00 GMT"'}
        assert (await b.head("k")).restore is Restore.DONE
    finally:
        await b.close()


def test_restore_state_parsing() -> None:
    assert restore_state(None) is None and restore_state("junk") is None
    assert restore_state('ongoing-request="TRUE"') is Restore.ONGOING
    assert restore_state("ongoing-request=false, expiry-date=x") is Restore.DONE
