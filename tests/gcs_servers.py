"""Google Cloud Storage stand-ins for tests: the PyPI `gcp-storage-emulator` on a free port, and a small fake.

The emulator speaks the JSON API but lacks what Ferry also relies on with Google: an OAuth2 token endpoint,
`x-goog-generation`/`x-goog-stored-content-length`/`x-goog-storage-class` on downloads (and `x-goog-hash` on a
ranged one), preconditions (`ifGenerationMatch`), `startOffset` and list pages (`maxResults`/`nextPageToken`),
key order in listings (it lists in insertion order), and object names ending in `/`. `FakeGcs` does those as
Google's documentation describes them (https://cloud.google.com/storage/docs/json_api/v1/objects,
https://developers.google.com/identity/protocols/oauth2/service-account#httprest), and checks each JWT: RS256
signature by the account's public key, `iss`, `aud`, `scope`, `exp`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import fastcrc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ferry.sandbox import HOST, find_binary, release_ports, reserve_ports

CLIENT_EMAIL = "ferry-test@project.iam.gserviceaccount.com"


@dataclass
class Account:
    """A service account with a fresh RSA key; `json(token_uri)` is its key file."""

    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))

    def pem(self) -> str:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()

    def json(self, token_uri: str) -> str:
        return json.dumps({
            "type": "service_account", "project_id": "ferry-test", "private_key_id": "k1",
            "private_key": self.pem(), "client_email": CLIENT_EMAIL, "client_id": "1",
            "token_uri": token_uri,
        })


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class GcsEmulator:
    """`gcp-storage-emulator start --in-memory` on a free loopback port; `create_bucket` makes a bucket."""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> GcsEmulator:
        binary = find_binary("gcp-storage-emulator")  # installed by the test extra
        (self.port,) = reserve_ports(1)
        self.proc = subprocess.Popen([binary, "start", "-H", HOST, "--port", str(self.port), "--in-memory", "-q"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gcp-storage-emulator did not start within 30 s")

    def create_bucket(self, name: str) -> str:
        req = urllib.request.Request(self.endpoint + "/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise
        return name

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
        if self.port:
            release_ports([self.port])
            self.port = 0


@dataclass
class _Object:
    data: bytes
    generation: int
    resource: dict[str, Any]


class FakeGcs:
    """A threaded fake of Google's token endpoint and the JSON API's read side (plus a simple media upload)."""

    def __init__(self, account: Account, *, page_size: int = 2, token_lifetime: int = 3600) -> None:
        self.account = account
        self.page_size = page_size
        self.token_lifetime = token_lifetime
        self.buckets: dict[str, dict[str, _Object]] = {}
        self.tokens: dict[str, float] = {}  # token -> expiry (time.time())
        self.token_requests = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._generation = 1_700_000_000_000_000
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((HOST, 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    @property
    def token_uri(self) -> str:
        return self.endpoint + "/token"

    def __enter__(self) -> FakeGcs:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def put(self, bucket: str, name: str, data: bytes, *, storage_class: str = "STANDARD",
            composite: bool = False, metadata: dict[str, str] | None = None,
            content_type: str = "application/octet-stream") -> int:
        with self._lock:
            self._generation += 1
            crc = base64.b64encode(fastcrc.crc32.iscsi(data).to_bytes(4, "big")).decode()
            res: dict[str, Any] = {
                "kind": "storage#object", "name": name, "bucket": bucket, "generation": str(self._generation),
                "size": str(len(data)), "updated": "2026-01-02T03:04:05.678Z", "storageClass": storage_class,
                "contentType": content_type, "crc32c": crc, "etag": "CJ" + str(self._generation),
            }
            if not composite:  # Google: composite objects have a CRC32C and no MD5
                res["md5Hash"] = base64.b64encode(hashlib.md5(data).digest()).decode()
            else:
                res["componentCount"] = 2
            if metadata:
                res["metadata"] = dict(metadata)
            self.buckets.setdefault(bucket, {})[name] = _Object(data, self._generation, res)
            return self._generation

    # -- the server --------------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, status: int, doc: Any) -> None:
                self._send(status, json.dumps(doc).encode(), {"Content-Type": "application/json"})

            def _error(self, status: int, message: str) -> None:
                self._json(status, {"error": {"code": status, "message": message, "errors": [{"message": message}]}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                parts = urlsplit(self.path)
                if parts.path == "/token":
                    fake.token_requests += 1
                    self._token(parse_qs(body.decode()))
                    return
                if not self._authorized():
                    return
                self._error(405, "not in this fake")

            def _token(self, form: dict[str, list[str]]) -> None:
                if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
                    self._json(400, {"error": "unsupported_grant_type"})
                    return
                try:
                    head, claims, sig = form["assertion"][0].split(".")
                    fake.account.key.public_key().verify(_b64d(sig), f"{head}.{claims}".encode(),
                                                         padding.PKCS1v15(), hashes.SHA256())
                    header, doc = json.loads(_b64d(head)), json.loads(_b64d(claims))
                except Exception:
                    self._json(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
                    return
                now = time.time()
                if (header.get("alg") != "RS256" or doc.get("iss") != CLIENT_EMAIL or doc.get("aud") != fake.token_uri
                        or "devstorage" not in doc.get("scope", "") or not doc["iat"] - 300 <= now < doc["exp"]
                        or doc["exp"] - doc["iat"] > 3600):
                    self._json(400, {"error": "invalid_grant", "error_description": "Invalid JWT claims."})
                    return
                token = "ya29.fake-" + os.urandom(8).hex()
                fake.tokens[token] = now + fake.token_lifetime
                self._json(200, {"access_token": token, "expires_in": fake.token_lifetime, "token_type": "Bearer"})

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization", "")
                token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
                if fake.tokens.get(token, 0) <= time.time():
                    self._error(401, "Invalid Credentials")
                    return False
                return True

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, dict(self.headers)))
                if not self._authorized():
                    return
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                pieces = parts.path.split("/")
                # /storage/v1/b/<bucket>/o[/<object>]
                if pieces[:4] != ["", "storage", "v1", "b"] or len(pieces) < 6 or pieces[5] != "o":
                    self._error(404, "Not Found")
                    return
                bucket = fake.buckets.get(unquote(pieces[4]))
                if bucket is None:
                    self._error(404, "The specified bucket does not exist.")
                    return
                if len(pieces) == 6:
                    self._list(bucket, query)
                    return
                name = unquote("/".join(pieces[6:]))
                obj = bucket.get(name)
                if obj is None or ("generation" in query and query["generation"] != str(obj.generation)):
                    self._error(404, f"No such object: {unquote(pieces[4])}/{name}")
                    return
                if "ifGenerationMatch" in query and query["ifGenerationMatch"] != str(obj.generation):
                    self._error(412, "At least one of the pre-conditions you specified did not hold.")
                    return
                if query.get("alt") != "media":
                    self._json(200, obj.resource)
                    return
                self._media(obj)

            def _list(self, bucket: dict[str, _Object], query: dict[str, str]) -> None:
                prefix, start = query.get("prefix", ""), query.get("startOffset", "")
                names = sorted((n for n in bucket if n.startswith(prefix) and n.encode() >= start.encode()),
                               key=str.encode)
                after = query.get("pageToken")
                if after:
                    names = [n for n in names if n.encode() > _b64d(after)]
                size = min(int(query.get("maxResults", 1000)), fake.page_size)
                page = names[:size]
                doc: dict[str, Any] = {"kind": "storage#objects", "items": [bucket[n].resource for n in page]}
                if len(names) > size:
                    doc["nextPageToken"] = base64.urlsafe_b64encode(page[-1].encode()).decode()
                self._json(200, doc)

            def _media(self, obj: _Object) -> None:
                res = obj.resource
                hashes_ = [f"crc32c={res['crc32c']}"] + ([f"md5={res['md5Hash']}"] if "md5Hash" in res else [])
                headers = {
                    "Content-Type": res["contentType"], "x-goog-generation": str(obj.generation),
                    "x-goog-metageneration": "1", "x-goog-stored-content-length": res["size"],
                    "x-goog-stored-content-encoding": "identity", "x-goog-storage-class": res["storageClass"],
                    "x-goog-hash": ",".join(hashes_), "Last-Modified": "Fri, 02 Jan 2026 03:04:05 GMT",
                    "ETag": res["etag"],
                }
                for key, value in (res.get("metadata") or {}).items():
                    headers[f"x-goog-meta-{key}"] = value
                data = obj.data
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start_s, _, end_s = rng[len("bytes="):].partition("-")
                    start = int(start_s)
                    end = min(int(end_s) if end_s else len(data) - 1, len(data) - 1)
                    if start >= len(data):
                        self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                        return
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                    self._send(206, data[start:end + 1], headers)
                    return
                self._send(200, data, headers)

        return Handler


def object_url(endpoint: str, bucket: str, name: str) -> str:
    return f"{endpoint}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
