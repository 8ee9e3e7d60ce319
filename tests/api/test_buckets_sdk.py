"""The bucket helper operations through the real OmsClient, against SeaweedFS standing in for the clouds."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkoms.v2 import (
    CheckPrefixReq,
    CheckPrefixRequest,
    CheckUrlSourceListFileFormatReq,
    CheckUrlSourceListFileFormatRequest,
    ListBucketsReq,
    OmsClient,
    PrefixKeyInfo,
    ShowBucketListRequest,
    ShowBucketObjectsRequest,
    ShowBucketRegionReq,
    ShowBucketRegionRequest,
    ShowBucketReq,
    ShowCdnInfoReq,
    ShowCdnInfoRequest,
    SourceCdnReq,
)
from live_server import LiveServer, ShiftedClock, Tenant, build_services, oms_client, serve, stop

from ferry.api.app import create_app
from ferry.sandbox import SeaweedServer
from ferry.service.buckets import HelperSettings

# SeaweedFS A plays Aliyun OSS in cn-hangzhou (the source side), B plays Huawei OBS in cn-north-4.
SRC_CLOUD, SRC_REGION = "Aliyun", "cn-hangzhou"
DST_REGION = "cn-north-4"


@dataclass
class FakeCdn:
    """A CDN in front of a SeaweedFS bucket: serves its objects with their MD5 ETags over plain HTTP.

    `wrong_etag` keys come back with another ETag; `no_head` keys answer HEAD with 405 (GET works).
    """

    store: SeaweedServer
    bucket: str = ""
    wrong_etag: set[str] = field(default_factory=set)
    no_head: set[str] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        cdn = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def _serve(self, with_body: bool) -> None:
                key = unquote(urlsplit(self.path).path)[1:]
                cdn.requests.append((self.command, key))
                if not with_body and key in cdn.no_head:
                    self.send_response(405)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, body = cdn.store.request("GET", f"/{cdn.bucket}/{key}")
                if status != 200:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                etag = hashlib.md5(body).hexdigest() if key not in cdn.wrong_etag else "0" * 32
                self.send_response(200)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self._serve(False)

            def do_GET(self) -> None:
                self._serve(True)

        return Handler


@dataclass
class Env:
    live: LiveServer
    client: OmsClient
    src: SeaweedServer
    dst: SeaweedServer
    cdn: FakeCdn


@pytest.fixture(scope="module")
def env(seaweed_a: SeaweedServer, seaweed_b: SeaweedServer) -> Iterator[Env]:
    cdn = FakeCdn(seaweed_a)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), cdn.handler())
    cdn.port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    tenant, other = Tenant(), Tenant()
    clock = ShiftedClock()
    records: list[str] = []
    settings = HelperSettings(
        endpoint_overrides={f"{SRC_CLOUD}/{SRC_REGION}": seaweed_a.endpoint,
                            f"HuaweiCloud/{DST_REGION}": seaweed_b.endpoint},
        # The operator trusts the fake CDN's loopback address, and nothing else private.
        cdn_allowed_hosts=frozenset({f"127.0.0.1:{cdn.port}", "127.0.0.1:1"}),
        public_endpoints=False,
        timeout=10.0,
    )
    services = dataclasses.replace(build_services([tenant, other], clock, records), bucket_helpers=settings)
    app = create_app(services)
    running = serve(app)
    live = LiveServer(running.url, tenant, other, clock, records, app)
    try:
        yield Env(live, oms_client(live.url, tenant.ak, tenant.sk, tenant.project_id), seaweed_a, seaweed_b, cdn)
    finally:
        stop(running)
        httpd.shutdown()
        httpd.server_close()


def put(store: SeaweedServer, bucket: str, key: str, body: bytes, content_type: str = "text/plain") -> None:
    status, _ = store.request("PUT", f"/{bucket}/{key}", body=body, headers={"Content-Type": content_type})
    assert status == 200


def fails(call: Callable[[], object], status: int, code: str, *secrets: str) -> ClientRequestException:
    with pytest.raises(ClientRequestException) as info:
        call()
    exc = info.value
    assert (exc.status_code, exc.error_code) == (status, code), exc.error_msg
    assert exc.request_id
    for secret in secrets:
        assert secret not in exc.error_msg
    return exc


@pytest.fixture(scope="module")
def folder_bucket(env: Env) -> str:
    name = env.src.create_bucket("helpers-folders")
    for key, body in [("docs/", b""), ("docs/a.txt", b"aaa"), ("docs/b.txt", b"bb"), ("docs/sub/c.txt", b"c"),
                      ("docs/sub2/d", b"dddd"), ("top.txt", b"t")]:
        put(env.src, name, key, body)
    return name


# -- show_bucket_list ----------------------------------------------------------------------------------
def test_show_bucket_list(env: Env, folder_bucket: str) -> None:
    resp = env.client.show_bucket_list(ShowBucketListRequest(
        ListBucketsReq(cloud_type=SRC_CLOUD, ak=env.src.access_key, sk=env.src.secret_key)))
    assert resp.status_code == 200
    assert folder_bucket in resp.body and resp.body == sorted(resp.body)


def test_show_bucket_list_errors(env: Env) -> None:
    src = env.src

    def call(**kw: Any) -> Callable[[], object]:
        body = {"cloud_type": SRC_CLOUD, "ak": src.access_key, "sk": src.secret_key, **kw}
        return lambda: env.client.show_bucket_list(ShowBucketListRequest(ListBucketsReq(**body)))

    wrong = "WRONG-" + src.secret_key
    fails(call(sk=wrong), 400, "OMS.0151", wrong, src.secret_key)
    fails(call(ak="NOSUCHKEY0000000"), 400, "OMS.0151", src.secret_key)
    fails(call(sk=None), 400, "OMS.0001")
    fails(call(cloud_type="Azure"), 400, "OMS.0001", src.secret_key)
    fails(call(cloud_type="NoSuchCloud"), 400, "OMS.0001", src.secret_key)
    # No operator endpoint for Tencent, and this deployment never calls public clouds.
    fails(call(cloud_type="Tencent"), 400, "OMS.0060", src.secret_key)
    fails(call(ak="A" * 101), 400, "OMS.0001", src.secret_key)


# -- show_bucket_objects -------------------------------------------------------------------------------
def list_objects(env: Env, bucket: str, path: str, size: int, behind: str = "") -> Any:
    return env.client.show_bucket_objects(ShowBucketObjectsRequest(ShowBucketReq(
        cloud_type=SRC_CLOUD, file_path=path, ak=env.src.access_key, sk=env.src.secret_key, data_center=SRC_REGION,
        page_size=size, behind_filename=behind, bucket_name=bucket)))


def test_show_bucket_objects_pages_through_a_folder(env: Env, folder_bucket: str) -> None:
    first = list_objects(env, folder_bucket, "docs/", 2)
    assert [(r.name, r.size) for r in first.records] == [("docs/a.txt", "3"), ("docs/b.txt", "2")]
    assert first.next_page is True and first.next_marker == "docs/b.txt"
    second = list_objects(env, folder_bucket, "docs/", 2, first.next_marker)
    # Sub-folders have no size: "--", as the console shows them.
    assert [(r.name, r.size) for r in second.records] == [("docs/sub/", "--"), ("docs/sub2/", "--")]
    assert second.next_page is False
    everything = list_objects(env, folder_bucket, "docs/", 100)
    assert [r.name for r in everything.records] == ["docs/a.txt", "docs/b.txt", "docs/sub/", "docs/sub2/"]
    assert everything.next_page is False
    root = list_objects(env, folder_bucket, "", 10)
    assert {(r.name, r.size) for r in root.records} == {("docs/", "--"), ("top.txt", "1")}


def test_show_bucket_objects_one_by_one_visits_each_entry_once(env: Env, folder_bucket: str) -> None:
    seen, behind = [], ""
    for _ in range(10):
        page = list_objects(env, folder_bucket, "docs/", 1, behind)
        seen += [r.name for r in page.records]
        if not page.next_page:
            break
        behind = page.next_marker
    assert seen == ["docs/a.txt", "docs/b.txt", "docs/sub/", "docs/sub2/"]


def test_show_bucket_objects_errors(env: Env, folder_bucket: str) -> None:
    fails(lambda: list_objects(env, folder_bucket, "docs", 10), 400, "OMS.0001")
    fails(lambda: list_objects(env, folder_bucket, "docs/", 101), 400, "OMS.0001")
    fails(lambda: list_objects(env, folder_bucket, "docs/", 0), 400, "OMS.0001")
    fails(lambda: list_objects(env, "no-such-bucket-here", "", 10), 400, "OMS.0155", env.src.secret_key)
    fails(lambda: list_objects(env, "Bad_Bucket!", "", 10), 400, "OMS.0001")
    req = ShowBucketReq(cloud_type=SRC_CLOUD, file_path="", ak=env.src.access_key, sk=env.src.secret_key,
                        data_center="cn-shanghai", page_size=5, behind_filename="", bucket_name=folder_bucket)
    fails(lambda: env.client.show_bucket_objects(ShowBucketObjectsRequest(req)), 400, "OMS.0060")


# -- show_bucket_region --------------------------------------------------------------------------------
def test_show_bucket_region(env: Env, folder_bucket: str) -> None:
    resp = env.client.show_bucket_region(ShowBucketRegionRequest(ShowBucketRegionReq(
        cloud_type=SRC_CLOUD, ak=env.src.access_key, sk=env.src.secret_key, bucket_name=folder_bucket)))
    assert (resp.id, resp.name, resp.support) == (SRC_REGION, "China (Hangzhou)", True)
    dst_bucket = env.dst.create_bucket("helpers-region-dst")
    resp = env.client.show_bucket_region(ShowBucketRegionRequest(ShowBucketRegionReq(
        cloud_type="HuaweiCloud", ak=env.dst.access_key, sk=env.dst.secret_key, bucket_name=dst_bucket)))
    assert (resp.id, resp.name, resp.support) == (DST_REGION, "CN North-Beijing4", True)


def test_show_bucket_region_errors(env: Env) -> None:
    def call(bucket: str, sk: str) -> Callable[[], object]:
        return lambda: env.client.show_bucket_region(ShowBucketRegionRequest(ShowBucketRegionReq(
            cloud_type=SRC_CLOUD, ak=env.src.access_key, sk=sk, bucket_name=bucket)))

    fails(call("no-such-bucket-here", env.src.secret_key), 400, "OMS.0155", env.src.secret_key)
    fails(call("helpers-folders", "nope"), 400, "OMS.0151", "nope")


# -- check_prefix --------------------------------------------------------------------------------------
def check_prefix(env: Env, bucket: str, prefix: str, **kw: Any) -> Any:
    body = {"cloud_type": SRC_CLOUD, "ak": env.src.access_key, "sk": env.src.secret_key, "bucket_name": bucket,
            "file_name": prefix, "data_center": SRC_REGION, **kw}
    return env.client.check_prefix(CheckPrefixRequest(CheckPrefixReq(**body)))


def test_check_prefix(env: Env, folder_bucket: str) -> None:
    assert check_prefix(env, folder_bucket, "docs/sub").exist is True
    assert check_prefix(env, folder_bucket, "docs/a.txt").exist is True
    assert check_prefix(env, folder_bucket, "").exist is True
    assert check_prefix(env, folder_bucket, "nothing/").exist is False
    empty = env.src.create_bucket("helpers-empty")
    assert check_prefix(env, empty, "").exist is False


def test_check_prefix_errors(env: Env, folder_bucket: str) -> None:
    fails(lambda: check_prefix(env, folder_bucket, "docs/", sk="bad-secret"), 400, "OMS.0151", "bad-secret")
    fails(lambda: check_prefix(env, "no-such-bucket-here", "docs/"), 400, "OMS.0155")
    fails(lambda: check_prefix(env, folder_bucket, "docs/", data_center="bad region!"), 400, "OMS.0001")
    # A security token goes to the store (as x-amz-security-token), which rejects a bogus one... or
    # ignores it (SeaweedFS): either way, never a 500 and never the token in the answer.
    try:
        check_prefix(env, folder_bucket, "docs/", security_token="tok-secret-123")
    except ClientRequestException as exc:
        assert exc.status_code == 400 and "tok-secret-123" not in exc.error_msg


# -- show_cdn_info -------------------------------------------------------------------------------------
def cdn_info(env: Env, bucket: str, keys: list[str] | None, domain: str | None = None, **cdn: Any) -> Any:
    source = {"authentication_type": "NONE", "domain": domain or f"127.0.0.1:{env.cdn.port}", "protocol": "http",
              **cdn}
    return env.client.show_cdn_info(ShowCdnInfoRequest(ShowCdnInfoReq(
        ak=env.src.access_key, sk=env.src.secret_key, cloud_type=SRC_CLOUD, region=SRC_REGION, bucket=bucket,
        prefix=PrefixKeyInfo(keys=keys) if keys is not None else None, source_cdn=SourceCdnReq(**source))))


def test_show_cdn_info(env: Env, folder_bucket: str) -> None:
    env.cdn.bucket = folder_bucket
    env.cdn.wrong_etag = {"docs/b.txt"}
    env.cdn.no_head = {"top.txt"}
    resp = cdn_info(env, folder_bucket, ["docs/a.txt", "docs/b.txt", "top.txt", "missing.txt"])
    got = {c.key: (c.is_object_existing, c.is_etag_matching) for c in resp.checked_keys}
    assert got == {"docs/a.txt": (True, True), "docs/b.txt": (True, False), "top.txt": (True, True),
                   "missing.txt": (False, False)}
    assert resp.is_download_available is True
    assert resp.is_same_cloud_type is False  # a loopback address is nobody's CDN
    assert ("GET", "top.txt") in env.cdn.requests  # HEAD refused, one byte of a GET instead
    # No keys: a few objects of the bucket are sampled.
    sampled = cdn_info(env, folder_bucket, None)
    assert sampled.checked_keys and all(c.is_object_existing for c in sampled.checked_keys)
    assert sampled.is_download_available is True


def test_show_cdn_info_download_unavailable(env: Env, folder_bucket: str) -> None:
    env.cdn.bucket = "another-bucket-entirely"  # the CDN serves something else: every key 404s there
    resp = cdn_info(env, folder_bucket, ["docs/a.txt"])
    assert resp.is_download_available is False
    assert [(c.is_object_existing, c.is_etag_matching) for c in resp.checked_keys] == [(True, False)]
    env.cdn.bucket = folder_bucket
    # Allowed, but nothing listens there: not downloadable, and still an answer.
    assert cdn_info(env, folder_bucket, ["docs/a.txt"], domain="127.0.0.1:1").is_download_available is False


def test_show_cdn_info_refuses_internal_domains(env: Env, folder_bucket: str) -> None:
    internal = ["127.0.0.1", f"127.0.0.2:{env.cdn.port}", "10.1.2.3", "localhost", "169.254.169.254", "[::1]",
                "metadata.google.internal", f"[::ffff:127.0.0.1]:{env.cdn.port}", f"localhost:{env.cdn.port}"]
    if (name := socket.gethostname()) and _resolves_to_loopback(name):
        internal.append(f"{name}:{env.cdn.port}")  # a plain DNS name of this machine
    missing = ["no-such-cdn.invalid", f"nothing-here.invalid:{env.cdn.port}"]
    answers = {
        domain: fails(lambda d=domain: cdn_info(env, folder_bucket, ["docs/a.txt"], domain=d), 400, "OMS.0001")
        for domain in internal + missing
    }
    # A name that does not exist is refused exactly like an internal one: the answers map no internal DNS.
    assert len({exc.error_msg for exc in answers.values()}) == 1, {d: e.error_msg for d, e in answers.items()}
    assert not any(n in answers[missing[0]].error_msg for n in ("invalid", "no-such", "resolves to"))
    for domain in ["http://cdn.example.com", "cdn.example.com/path", "user@cdn.example.com", "cdn.example.com:99999"]:
        fails(lambda d=domain: cdn_info(env, folder_bucket, ["docs/a.txt"], domain=d), 400, "OMS.0001")


def _resolves_to_loopback(name: str) -> bool:
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def test_show_cdn_info_errors(env: Env, folder_bucket: str) -> None:
    # A type signed with authentication_key needs one (OMS.1032); a refusal never echoes a given key.
    for kind in ("ALIYUN_OSS_C", "TENCENT_COS_D", "AZURE_SAS_TOKEN"):
        fails(lambda k=kind: cdn_info(env, folder_bucket, ["a"], authentication_type=k), 400, "OMS.1032")
    fails(lambda: cdn_info(env, folder_bucket, ["a"], authentication_type="TENCENT_COS_A",
                           authentication_key="cdn-key-secret", domain="cdn.example.com/x"), 400, "OMS.0001",
          "cdn-key-secret")
    fails(lambda: cdn_info(env, folder_bucket, ["a"], authentication_type="NOT_A_TYPE"), 400, "OMS.0001")
    fails(lambda: cdn_info(env, folder_bucket, ["a"], protocol="ftp"), 400, "OMS.0001")
    fails(lambda: cdn_info(env, folder_bucket, ["k"] * 101), 400, "OMS.0001")
    fails(lambda: cdn_info(env, "no-such-bucket-here", ["a"]), 400, "OMS.0155")


# -- check_url_source_list_file_format -----------------------------------------------------------------
@pytest.fixture(scope="module")
def list_bucket(env: Env) -> str:
    return env.dst.create_bucket("helpers-lists")


def check_list(env: Env, bucket: str, key: str, sk: str | None = None) -> Any:
    return env.client.check_url_source_list_file_format(CheckUrlSourceListFileFormatRequest(
        CheckUrlSourceListFileFormatReq(obs_bucket=bucket, list_file_key=key, ak=env.dst.access_key,
                                        sk=sk or env.dst.secret_key, region=DST_REGION)))


@pytest.mark.parametrize("content", [
    b"http://example.com/a.jpg\ta.jpg\nhttps://cdn.example.com/dir/b%20c.png\tdir/b%20c.png\n",
    b"http://example.com/a.jpg\ta.jpg\r\nhttp://example.com/b\tb",  # CRLF, no final newline
    b"docs/a.txt\ndocs/b%20c.txt\n%E4%B8%AD.txt\n\n",  # an object list, blank trailing lines
    b"http://example.com/dir/a.jpg\nhttp://example.com/b.jpg\tb.jpg\n",  # a URL alone names its object by path
])
def test_check_list_file_accepts(env: Env, list_bucket: str, content: bytes) -> None:
    key = f"lists/ok-{hashlib.md5(content).hexdigest()[:8]}.txt"
    put(env.dst, list_bucket, key, content)
    assert check_list(env, list_bucket, key).status_code == 200


@pytest.mark.parametrize(("content", "content_type", "code", "where"), [
    (b"http://example.com/a\ta\nnot a url\tb\n", "text/plain", "OMS.0016", "line 2"),
    (b"http://example.com/\n", "text/plain", "OMS.0016", "line 1"),  # no key, and no path to name it by
    (b"http://example.com/a\ta\tb\n", "text/plain", "OMS.0016", "line 1"),
    (b"docs/a.txt\ndocs/b c.txt\n", "text/plain", "OMS.0016", "line 2"),
    (b"\xef\xbb\xbfdocs/a.txt\n", "text/plain", "OMS.0016", "line 1"),
    (b"docs/\xff.txt\n", "text/plain", "OMS.0016", "line 1"),
    (b"x" * 70000 + b"\n", "text/plain", "OMS.0018", "line 1"),
    (b"\n\n", "text/plain", "OMS.0017", ""),
    (b"docs/a.txt\n", "application/json", "OMS.0019", ""),  # SeaweedFS sniffs octet-stream
    (b"docs/a.txt\n", "text/plain; charset=utf-8", None, ""),
])
def test_check_list_file_rejects(
    env: Env, list_bucket: str, content: bytes, content_type: str, code: str | None, where: str
) -> None:
    key = f"lists/bad-{hashlib.md5(content + content_type.encode()).hexdigest()[:8]}.txt"
    put(env.dst, list_bucket, key, content, content_type)
    if code is None:
        assert check_list(env, list_bucket, key).status_code == 200
        return
    exc = fails(lambda: check_list(env, list_bucket, key), 400, code)
    assert where in exc.error_msg


def test_check_list_file_errors(env: Env, list_bucket: str) -> None:
    put(env.dst, list_bucket, "lists/list.csv", b"a\n")
    fails(lambda: check_list(env, list_bucket, "lists/list.csv"), 400, "OMS.0014")
    fails(lambda: check_list(env, list_bucket, "lists/absent.txt"), 400, "OMS.0013")
    put(env.dst, list_bucket, "lists/empty.txt", b"")
    fails(lambda: check_list(env, list_bucket, "lists/empty.txt"), 400, "OMS.0017")
    fails(lambda: check_list(env, list_bucket, "lists/absent.txt", sk="bad-dst-secret"), 400, "OMS.0057",
          "bad-dst-secret")
    req = CheckUrlSourceListFileFormatReq(obs_bucket=list_bucket, list_file_key="a.txt", ak=env.dst.access_key,
                                          sk=env.dst.secret_key, region="cn-east-3")
    fails(lambda: env.client.check_url_source_list_file_format(CheckUrlSourceListFileFormatRequest(req)),
          400, "OMS.0060")


def test_other_project_signature_still_required(env: Env) -> None:
    stranger = oms_client(env.live.url, env.live.tenant.ak, "not-the-secret", env.live.tenant.project_id)
    fails(lambda: stranger.show_bucket_list(ShowBucketListRequest(
        ListBucketsReq(cloud_type=SRC_CLOUD, ak=env.src.access_key, sk=env.src.secret_key))), 401, "APIGW.0301")
