"""`ferry demo` (a real migration between two sandbox SeaweedFS servers it starts and stops itself) and
`ferry sandbox` (one such server to try Ferry on, until Ctrl-C)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ferry.errors import FatalError
from ferry.objects import ObjectMeta
from ferry.sandbox import SandboxError, SeaweedServer

if TYPE_CHECKING:
    from ferry.storage.base import Backend

# Keys that break careless tools, mixed into the sample data.
EDGE_KEYS = [
    "unicode/Grüße 日本語 ✓.txt", "spaces/a b c.txt", "plus/a+b.txt", "percent/100%.txt",
    "question/why?.txt", "hash/#1.txt", "dir-marker/", "a/b", "a b/c", "a-b", "empty.bin",
]


def _bucket(server: SeaweedServer, bucket: str) -> Backend:
    from ferry.storage.registry import open_backend

    return open_backend(f"s3://{bucket}", endpoint=server.endpoint, region="us-east-1",
                        access_key=server.access_key, secret_key=server.secret_key, profile="seaweedfs")


async def _populate(server: SeaweedServer, bucket: str, objects: int) -> None:
    src = _bucket(server, bucket)
    sem = asyncio.Semaphore(32)

    async def put(key: str, data: bytes) -> None:
        async with sem:
            await src.put(key, data, ObjectMeta(content_type="application/octet-stream"))

    jobs = [put(f"small/{i:06d}.bin", os.urandom(4096)) for i in range(objects)]
    jobs += [put(k, b"" if k.endswith("/") or k == "empty.bin" else k.encode()) for k in EDGE_KEYS]
    jobs += [put(f"large/{i}.bin", os.urandom(40 * 1024 * 1024)) for i in range(2)]
    await asyncio.gather(*jobs)
    await src.close()


async def _migrate(a: SeaweedServer, b: SeaweedServer, state: Path, as_json: bool) -> int:
    """`ferry migrate s3://source s3://destination` between the two servers, with its defaults and through the
    service call it makes; 0 when every object made it."""
    from ferry.db.jobdb import open_job_repo
    from ferry.engine.pipeline import TransferOptions
    from ferry.engine.progress import Counters, TerminalProgress
    from ferry.service.transfers import run_migration
    from ferry.settings import database_url, reports_dir
    from ferry.storage.wrappers import RetryingBackend

    src, dst = RetryingBackend(_bucket(a, "source")), RetryingBackend(_bucket(b, "destination"))
    counters = Counters()
    bar = TerminalProgress(counters, sys.stderr) if sys.stderr.isatty() else None
    if bar is not None:
        bar.start()
    try:
        repo = await asyncio.to_thread(open_job_repo, database_url(state))
        summary = await run_migration(src, dst, repo, TransferOptions(), report_dir=reports_dir(state),
                                      counters=counters, lock_dir=state)
    finally:
        if bar is not None:
            await bar.stop()
        await asyncio.gather(src.close(), dst.close(), return_exceptions=True)
    if as_json:
        print(json.dumps(summary.as_dict()), flush=True)
    else:
        print(summary.describe() + (f"\nfailed objects: {summary.report}" if summary.report else ""), flush=True)
    return 0 if summary.failed == 0 and not summary.error else 1


def run_demo(objects: int = 2000, as_json: bool = False) -> int:
    """Start two servers, fill the source, migrate with the progress bar, then re-run (nothing to copy)."""
    print("starting two sandbox S3 servers (SeaweedFS)...", file=sys.stderr)
    with SeaweedServer() as a, SeaweedServer() as b, tempfile.TemporaryDirectory(prefix="ferry-demo-") as tmp:
        state = Path(tmp)
        a.create_bucket("source")
        b.create_bucket("destination")
        print(f"writing {objects} small objects, {len(EDGE_KEYS)} edge-case keys and 2 x 40 MiB objects "
              f"to {a.endpoint}/source ...", file=sys.stderr)
        asyncio.run(_populate(a, "source", objects))
        print(f"migrating to {b.endpoint}/destination ...", file=sys.stderr)
        code = asyncio.run(_migrate(a, b, state, as_json))
        if code != 0:
            return code
        print("running the same migration again: everything is verified in place, nothing is copied...",
              file=sys.stderr)
        return asyncio.run(_migrate(a, b, state, as_json))


def run_sandbox(buckets: Sequence[str], data_dir: str | None = None) -> int:
    """Start a SeaweedFS S3 server with `buckets` (at least one), print how to use it, and serve until SIGINT or
    SIGTERM."""
    try:
        with SeaweedServer(data_dir=data_dir) as server:
            for bucket in buckets:
                server.create_bucket(bucket)
            # Blocked only now: the server, started before, must still see its own SIGTERM at shutdown.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            ep, ak, sk = server.endpoint, shlex.quote(server.access_key), shlex.quote(server.secret_key)
            src, dst = (buckets[0], buckets[1]) if len(buckets) > 1 else (buckets[0], f"{buckets[0]}/copy")
            kept = f"kept in {data_dir}" if data_dir else "removed when it stops"
            print(f"ferry: sandbox S3 store (SeaweedFS) on {ep}, buckets: {', '.join(buckets)} (data {kept}; "
                  "Ctrl-C stops it)\n"
                  f"# for `ferry serve`: FERRY_ENDPOINT_OVERRIDES='{{\"HuaweiCloud/cn-north-4\": \"{ep}\"}}'\n"
                  "# in another shell:\n"
                  f"export FERRY_SRC_AK={ak} FERRY_SRC_SK={sk} FERRY_DST_AK={ak} FERRY_DST_SK={sk}\n"
                  f"ferry migrate s3://{src} s3://{dst} --src-endpoint {ep} --dst-endpoint {ep}", flush=True)
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except SandboxError as exc:
        raise FatalError(f"the sandbox store did not start: {str(exc).splitlines()[0]}") from None
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    return 0


if __name__ == "__main__":
    sys.exit(run_demo(json.loads(sys.argv[1]) if len(sys.argv) > 1 else 2000))
