"""A local CDN for tests: checks each `source_cdn.authentication_type` as its vendor documents it, strips the
signature and serves the object from a SeaweedFS origin bucket.

It runs an aiohttp server on a free 127.0.0.1 port in a thread of its own (its own event loop), so the tests'
loop and a Ferry server in another process can both reach it. The checks are written from the vendors' pages
(shared/sources-and-scale.md §A), not from Ferry's signer, so a signer bug is a refusal here:
- Alibaba/Tencent A: `?auth_key|sign={ts}-{rand}-{uid}-{md5(uri-ts-rand-uid-key)}`, 403 after ts + ttl;
- B: `/{YYYYMMDDHHMM UTC+8}/{md5(key+stamp+uri)}/path`; C: `/{md5(key+uri+hexts)}/{hexts}/path` (the hex as
  written is hashed); Tencent D: `?sign={md5(key+uri+t)}&t={t}`; all 403 when wrong or older than `ttl`;
- Qiniu: `?e={deadline}&token={AK}:{urlsafe_b64(hmac_sha1(SK, url up to the token))}`, 401 when wrong or late;
- Kingsoft: `?KSSAccessKeyId&Expires&Signature=b64(hmac_sha1(SK, "GET\\n\\n\\n{E}\\n/{bucket}{path}"))`, 403;
- Azure: a container or blob service SAS, HMAC-SHA256 under the account key, `se` in the future, `sp` with r.
`tampered` maps keys to other bytes to serve (a stale CDN cache); `requests` records every URL asked for.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qs, parse_qsl, unquote

from aiohttp import web

from ferry.errors import NotFoundError
from ferry.sandbox import S3Server
from ferry.storage.s3 import S3Backend

CHINA = timezone(timedelta(hours=8))
AZURE_ACCOUNT = "ferrycdn"
AZURE_ACCOUNT_KEY = base64.b64encode(b"ferry-test-account-key-32-bytes!").decode()


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass
class CdnConfig:
    """How the CDN checks requests: the type, its key, the source AK/SK and bucket, the validity window."""

    auth_type: str = "NONE"
    key: str = ""
    ak: str = ""
    sk: str = ""
    bucket: str = ""
    ttl: int = 1800
    azure_container: str = "container"
    clock: Callable[[], float] = time.time


@dataclass
class CdnTestServer:
    """The CDN in front of `origin`'s `bucket`; `start()` it, point `source_cdn.domain` at `domain`."""

    origin: S3Server
    bucket: str
    config: CdnConfig = field(default_factory=CdnConfig)
    tampered: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    refusals: list[tuple[int, str]] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cdn-test-server", daemon=True)
        self._runner: web.AppRunner | None = None
        self._store: S3Backend | None = None

    @property
    def domain(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> CdnTestServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> CdnTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        self._store = S3Backend(self.origin.endpoint, self.origin.region, self.origin.access_key,
                                self.origin.secret_key, self.bucket)
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._store is not None:
            await self._store.close()

    # -- serving ---------------------------------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path
        self.requests.append(raw)
        try:
            path = self._verify(request.scheme, request.host, raw)
        except Refused as exc:
            self.refusals.append((exc.status, str(exc)))
            if exc.status == 401:
                return web.json_response({"error": "download token auth failed"}, status=401)
            return web.Response(status=exc.status, text=f"refused: {exc}")
        key = unquote(path[1:])
        assert self._store is not None
        try:
            info = await self._store.head(key)
        except NotFoundError:
            return web.Response(status=404)
        data = self.tampered.get(key)
        if data is None:
            _, data = await self._store.read_object(key)
        headers = {"ETag": f'"{info.etag}"', "Content-Type": "application/octet-stream"}
        rng = request.http_range
        if "Range" in request.headers and rng.start is not None:
            end = len(data) if rng.stop is None else min(rng.stop, len(data))
            headers["Content-Range"] = f"bytes {rng.start}-{end - 1}/{len(data)}"
            return web.Response(status=206, body=data[rng.start:end], headers=headers)
        return web.Response(body=data, headers=headers)

    # -- checking signatures: each returns the origin path (percent-encoded) -------------------------------------

    def _verify(self, scheme: str, host: str, raw: str) -> str:
        path, _, query = raw.partition("?")
        kind, cfg = self.config.auth_type, self.config
        now = cfg.clock()
        if kind == "NONE":
            return path
        if kind in ("ALIYUN_OSS_A", "TENCENT_COS_A"):
            param = "auth_key" if kind == "ALIYUN_OSS_A" else "sign"
            value = dict(parse_qsl(query)).get(param)
            parts = (value or "").split("-")
            if len(parts) != 4:
                raise Refused(403, "no signature")
            ts, rand, uid, digest = parts
            if now > int(ts) + cfg.ttl:
                raise Refused(403, "expired")
            if _md5(f"{path}-{ts}-{rand}-{uid}-{cfg.key}") != digest:
                raise Refused(403, "bad signature")
            return path
        if kind in ("ALIYUN_OSS_B", "TENCENT_COS_B"):
            _, stamp, digest, rest = ([*path.split("/", 3), "", "", ""])[:4]
            rest = "/" + rest
            try:
                signed = datetime.strptime(stamp, "%Y%m%d%H%M").replace(tzinfo=CHINA)
            except ValueError:
                raise Refused(403, "no signature") from None
            if datetime.fromtimestamp(now, UTC) > signed + timedelta(seconds=cfg.ttl):
                raise Refused(403, "expired")
            if _md5(cfg.key + stamp + rest) != digest:
                raise Refused(403, "bad signature")
            return rest
        if kind in ("ALIYUN_OSS_C", "TENCENT_COS_C"):
            _, digest, stamp, rest = ([*path.split("/", 3), "", "", ""])[:4]
            rest = "/" + rest
            try:
                signed_at = int(stamp, 16)
            except ValueError:
                raise Refused(403, "no signature") from None
            if now > signed_at + cfg.ttl:
                raise Refused(403, "expired")
            if _md5(cfg.key + rest + stamp) != digest:
                raise Refused(403, "bad signature")
            return rest
        if kind == "TENCENT_COS_D":
            q = dict(parse_qsl(query))
            if "sign" not in q or not q.get("t", "").isdigit():
                raise Refused(403, "no signature")
            if now > int(q["t"]) + cfg.ttl:
                raise Refused(403, "expired")
            if _md5(cfg.key + path + q["t"]) != q["sign"]:
                raise Refused(403, "bad signature")
            return path
        if kind == "QINIU_PRIVATE_AUTHENTICATION":
            unsigned, sep, token = raw.rpartition("&token=")
            if not sep:
                raise Refused(401, "download token not specified")
            ak, _, sign = token.partition(":")
            deadline = parse_qs(unsigned.partition("?")[2]).get("e", ["0"])[0]
            expected = base64.urlsafe_b64encode(
                hmac.new(cfg.sk.encode(), f"{scheme}://{host}{unsigned}".encode(), hashlib.sha1).digest()).decode()
            if ak != cfg.ak or not hmac.compare_digest(sign, expected):
                raise Refused(401, "bad token")
            if not deadline.isdigit() or now > int(deadline):
                raise Refused(401, "expired")
            return path
        if kind == "KSYUN_PRIVATE_AUTHENTICATION":
            q = dict(parse_qsl(query))
            expires = q.get("Expires", "")
            if q.get("KSSAccessKeyId") != cfg.ak or not expires.isdigit():
                raise Refused(403, "InvalidAccessKeyId")
            if now > int(expires):
                raise Refused(403, "Request has expired")
            to_sign = f"GET\n\n\n{expires}\n/{cfg.bucket}{path}"
            expected = base64.b64encode(hmac.new(cfg.sk.encode(), to_sign.encode(), hashlib.sha1).digest()).decode()
            if not hmac.compare_digest(q.get("Signature", ""), expected):
                raise Refused(403, "SignatureDoesNotMatch")
            return path
        if kind == "AZURE_SAS_TOKEN":
            return self._azure(path, query, now)
        raise Refused(403, "unknown type")

    def _azure(self, path: str, query: str, now: float) -> str:
        cfg = self.config
        q = dict(parse_qsl(query))
        if "sig" not in q or "se" not in q or "r" not in q.get("sp", ""):
            raise Refused(403, "AuthenticationFailed")
        resource = f"/blob/{AZURE_ACCOUNT}/{cfg.azure_container}"
        if q.get("sr") == "b":
            resource += unquote(path)
        fields = [q.get("sp", ""), q.get("st", ""), q["se"], resource, q.get("si", ""), q.get("sip", ""),
                  q.get("spr", ""), q.get("sv", ""), q.get("sr", ""), q.get("sst", ""), q.get("ses", ""),
                  q.get("rscc", ""), q.get("rscd", ""), q.get("rsce", ""), q.get("rscl", ""), q.get("rsct", "")]
        key = base64.b64decode(AZURE_ACCOUNT_KEY)
        expected = base64.b64encode(hmac.new(key, "\n".join(fields).encode(), hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(q["sig"], expected):
            raise Refused(403, "AuthenticationFailed: signature")
        expiry = datetime.strptime(q["se"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if datetime.fromtimestamp(now, UTC) > expiry:
            raise Refused(403, "AuthenticationFailed: expired")
        return path


def azure_container_sas(container: str, expiry: datetime) -> str:
    """A read/list container SAS made by Microsoft's own SDK for the test account."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(AZURE_ACCOUNT, container, account_key=AZURE_ACCOUNT_KEY,
                                  permission=ContainerSasPermissions(read=True, list=True), expiry=expiry)
