"""The `ferry` command line: migrate between buckets, run the demo sandbox, serve the API, manage API keys."""

from __future__ import annotations

import argparse
import asyncio
import enum
import gc
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

from ferry import __version__
from ferry.errors import AccessError, FatalError, FerryError, LocalStateError, UsageError

if TYPE_CHECKING:
    from ferry.db.job_repo import JobRepo
    from ferry.storage.base import Backend

_T = TypeVar("_T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("ferry")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit code 2 (the CLI contract)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"ferry: error: {message}\n")


def _add_side(p: argparse.ArgumentParser, side: str, label: str) -> None:
    p.add_argument(f"--{side}-endpoint", metavar="URL", help=f"{label} S3 endpoint URL (azure://: blob service URL)")
    p.add_argument(f"--{side}-ak", metavar="AK", help=f"{label} access key (or FERRY_{side.upper()}_AK; azure://: "
                                                      "the account name)")
    p.add_argument(f"--{side}-sk", metavar="SK", help=f"{label} secret key (or FERRY_{side.upper()}_SK; azure://: "
                                                      f"the account key, or FERRY_{side.upper()}_CONNECTION_STRING)")
    p.add_argument(f"--{side}-region", metavar="R", help=f"{label} region")
    p.add_argument(f"--{side}-profile", metavar="NAME", help=f"{label} cloud profile (aws, aliyun, seaweedfs, ...)")
    p.add_argument(f"--{side}-json-auth-file", metavar="PATH",
                   help=f"{label} Google service-account key file, for gs:// (or FERRY_{side.upper()}_JSON_AUTH_FILE, "
                        "else GOOGLE_APPLICATION_CREDENTIALS)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ferry", description="Object storage migration and sync.")
    parser.add_argument("--version", action="version", version=f"ferry {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    m = sub.add_parser(
        "migrate", help="copy a bucket (or prefix) to another, verified and resumable",
        description="Copy a bucket (or prefix) to another, verified and resumable. A PREFIX is a folder, as in "
                    "`aws s3 sync` and rclone, with or without its trailing /: `ferry migrate s3://photos/docs "
                    "s3://backup/all` copies docs/x to all/x (and leaves docs2/x out).")
    m.add_argument("source", help="s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX], azure://CONTAINER[/PREFIX], "
                                  "a local directory, or mem://BUCKET[/PREFIX]; keys are taken relative to PREFIX/")
    m.add_argument("destination", help="s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX], azure://CONTAINER[/PREFIX], "
                                       "a local directory, or mem://BUCKET[/PREFIX]; keys are written under PREFIX/")
    _add_side(m, "src", "source")
    m.add_argument("--src-cdn-domain", metavar="HOST[:PORT]",
                   help="fetch the source's bytes through this CDN domain (listed through the bucket API, checked "
                        "against it); FERRY_CDN_ALLOWED_HOSTS allows a private host")
    m.add_argument("--src-cdn-protocol", choices=("http", "https"), default="https", help="default https")
    m.add_argument("--src-cdn-auth", metavar="TYPE", default="NONE",
                   help="the CDN's URL signing: NONE, ALIYUN_OSS_A/B/C, TENCENT_COS_A/B/C/D, "
                        "QINIU_PRIVATE_AUTHENTICATION, KSYUN_PRIVATE_AUTHENTICATION (with the source keys) or "
                        "AZURE_SAS_TOKEN; the key or SAS token from FERRY_SRC_CDN_KEY")
    _add_side(m, "dst", "destination")
    m.add_argument("--overwrite", default="SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE",
                   help="NO_OVERWRITE | SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE (default) | "
                        "CRC64_COMPARISON_OVERWRITE | FULL_OVERWRITE")
    m.add_argument("--consistency-check", default="size_last_modified",
                   help="size_last_modified (default) | crc64 | no_check")
    m.add_argument("--reread-size-only", action="store_true",
                   help="read objects whose source gives no checksum (checked by their size only) again from "
                        "both stores after the copy, and compare")
    m.add_argument("--metadata", action="store_true",
                   help="also migrate Cache-Control, Content-Disposition, Content-Encoding, Content-Language, "
                        "Expires and user metadata (Content-Type is always migrated)")
    m.add_argument("--storage-class", metavar="CLASS", help="storage class of the written objects")
    m.add_argument("--restore", action="store_true",
                   help="restore archived source objects (the vendor's own call) and copy them as they come back; "
                        "without it they fail at once")
    m.add_argument("--restore-days", type=int, default=1, metavar="N",
                   help="days a restored copy stays readable (default 1)")
    m.add_argument("--restore-poll", type=float, default=600.0, metavar="SECONDS",
                   help="how often a restore under way is looked at (default 600)")
    m.add_argument("--migrate-since", metavar="TIME",
                   help="only objects modified at or after TIME (epoch seconds or ISO 8601)")
    m.add_argument("--concurrency", type=int, default=64, metavar="N", help="objects in flight (default 64)")
    m.add_argument("--part-size", type=int, default=16, metavar="MIB", help="multipart part size in MiB (default 16)")
    m.add_argument("--multipart-threshold", type=int, default=128, metavar="MIB",
                   help="objects at least this big (MiB, default 128) are copied in parallel parts that a "
                        "restarted run resumes; smaller ones from 16 MiB are streamed into one PUT")
    m.add_argument("--memory-limit", type=int, default=96, metavar="MIB",
                   help="object data held in memory at once (MiB, default 96; peak RSS is about twice this)")
    m.add_argument("--state-dir", metavar="DIR", help="where the resumable job state lives")
    m.add_argument("--json", action="store_true", help="end with one JSON summary line on stdout")
    m.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")

    d = sub.add_parser("demo", help="migrate sample data between two local sandbox S3 servers it starts")
    d.add_argument("--objects", type=int, default=2000, help="how many small objects to create")
    d.add_argument("--json", action="store_true", help="end with one JSON summary line on stdout")

    b = sub.add_parser("sandbox", help="run a local S3 store (SeaweedFS) to try Ferry on, until Ctrl-C; prints "
                                       "its endpoint, keys and a first `ferry migrate`")
    b.add_argument("--bucket", action="append", metavar="NAME",
                   help="a bucket to create (repeatable; default: source and destination)")
    b.add_argument("--data-dir", metavar="DIR", help="keep the data here (default: removed when it stops)")

    s = sub.add_parser("serve", help="run the OMS v2 API service with its task runner")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8780, help="port to listen on (default 8780)")
    s.add_argument("--max-tasks", type=int, default=5, metavar="N", help="tasks running at once (default 5)")

    w = sub.add_parser("worker", help="run a distributed-mode worker: takes work units from FERRY_BROKER_URL and "
                                      "runs them against FERRY_DATABASE_URL (PostgreSQL), until SIGTERM")
    w.add_argument("--threads", type=int, default=4, metavar="N", help="units run at once (default 4)")
    w.add_argument("--concurrency", type=int, default=64, metavar="N",
                   help="objects in flight in this worker, shared by its units (default 64)")
    w.add_argument("--unit-keys", type=int, default=1000, metavar="N",
                   help="objects per copy unit handed out by a listing unit (default 1000)")
    w.add_argument("--list-ranges", type=int, default=16, metavar="N",
                   help="key ranges a flat listing of a byte-ordered source is cut into (default 16)")
    w.add_argument("--lease-ttl", type=float, default=30.0, metavar="SECONDS",
                   help="a unit whose worker is silent this long is given to another (default 30)")
    w.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM, how long running units may finish before they are handed back (default 30)")

    ws = sub.add_parser("workers", help="the cluster's workers and servers (distributed mode): host, pid, units "
                                        "in flight, last heartbeat",
                        description="The workers and dispatching servers registered in the FERRY_DATABASE_URL "
                                    "database, with the units queued and running. The same as GET "
                                    "/v2/{project_id}/workers.")
    ws.add_argument("--json", action="store_true", help="one JSON document on stdout instead of a table")

    c = sub.add_parser("credentials", help="API access keys (AK/SK) of projects")
    csub = c.add_subparsers(dest="action", required=True, parser_class=_Parser)
    cc = csub.add_parser("create", help="create an AK/SK pair; prints one JSON line (the only time the SK shows)")
    cc.add_argument("--project-id", required=True, help="the project (32 hex characters)")
    cl = csub.add_parser("list", help="list access keys (never their secrets), one JSON line each")
    cl.add_argument("--project-id", help="only this project's keys")
    cr = csub.add_parser("revoke", help="revoke an access key")
    cr.add_argument("access_key", help="the access key to revoke")

    t = sub.add_parser("tokens", help="X-Auth-Token tokens of projects, each living as long as its access key")
    tsub = t.add_subparsers(dest="action", required=True, parser_class=_Parser)
    tc = tsub.add_parser("create", help="create a token; prints one JSON line (the only time the token shows)")
    tc.add_argument("--project-id", required=True, help="the project (32 hex characters)")
    tc.add_argument("--ttl", type=int, default=86400, metavar="SECONDS", help="lifetime (default 86400)")
    tc.add_argument("--access-key", metavar="AK", help="the project's access key the token lives with (needed "
                    "when it has several); revoking the key revokes the token")
    tl = tsub.add_parser("list", help="list tokens by id (never the tokens), one JSON line each")
    tl.add_argument("--project-id", help="only this project's tokens")
    tr = tsub.add_parser("revoke", help="revoke a token by id, or every token of a project")
    tr.add_argument("token_id", nargs="?", help="the token id `ferry tokens list` shows")
    tr.add_argument("--project-id", help="with --all: the project whose tokens to revoke")
    tr.add_argument("--all", action="store_true", help="revoke every token of --project-id")
    return parser


def _parse_since(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(raw).timestamp()
    except ValueError:
        raise UsageError(f"--migrate-since: {raw!r} is neither epoch seconds nor an ISO 8601 time") from None


def _secret(args: argparse.Namespace, side: str, which: str) -> str | None:
    value: str | None = getattr(args, f"{side}_{which}")
    return value or os.environ.get(f"FERRY_{side.upper()}_{which.upper()}") or None


def _state_dir(raw: str | None) -> Path | None:
    return Path(raw).expanduser() if raw else None


def _open_side(args: argparse.Namespace, side: str, url: str):  # type: ignore[no-untyped-def]
    from ferry.storage.profiles import get_profile
    from ferry.storage.registry import open_backend, parse_spec

    label = "source" if side == "src" else "destination"
    endpoint, profile = getattr(args, f"{side}_endpoint"), getattr(args, f"{side}_profile")
    access_key, secret_key = _secret(args, side, "ak"), _secret(args, side, "sk")
    try:
        if parse_spec(url).scheme == "azure":
            # An account key or connection string never goes on a command line others can read: env only.
            env = f"FERRY_{side.upper()}"
            connection_string = os.environ.get(f"{env}_CONNECTION_STRING") or None
            if not connection_string and not (access_key and secret_key):
                raise UsageError(f"{url} needs the account name and key ({env}_AK and {env}_SK, or --{side}-ak "
                                 f"and --{side}-sk) or a connection string in {env}_CONNECTION_STRING")
            return open_backend(url, endpoint=endpoint, access_key=access_key, secret_key=secret_key,
                                connection_string=connection_string)
        if parse_spec(url).scheme == "s3":
            # Said here, where the flags are known: the storage layer can only say what is missing.
            env = f"FERRY_{side.upper()}"
            if not access_key:
                raise UsageError(f"{url} needs an access key: set {env}_AK (or --{side}-ak)")
            if not secret_key:
                raise UsageError(f"{url} needs a secret key: set {env}_SK (or --{side}-sk)")
            if endpoint is None and get_profile(profile or "s3").endpoint_template is None:
                raise UsageError(f"{url} needs an endpoint: give --{side}-endpoint URL (or --{side}-profile "
                                 "with a cloud whose endpoints Ferry knows)")
        key_file = _secret(args, side, "json_auth_file") or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None
        if parse_spec(url).scheme == "gs" and not key_file:
            raise UsageError(f"{url} needs a service-account key file: set FERRY_{side.upper()}_JSON_AUTH_FILE "
                             f"(or --{side}-json-auth-file, or GOOGLE_APPLICATION_CREDENTIALS)")
        return open_backend(url, endpoint=endpoint, region=getattr(args, f"{side}_region"), access_key=access_key,
                            secret_key=secret_key, profile=profile, json_auth_file=key_file, source=side == "src")
    except UsageError as exc:
        raise UsageError(f"{label}: {exc.message}") from None


def _through_cdn(args: argparse.Namespace, source: Backend) -> Backend:
    """The source, its bytes fetched through `--src-cdn-domain` when one is given."""
    from ferry.storage.cdn_signing import AUTH_TYPES, KEYED_TYPES, CdnCredentials
    from ferry.storage.cdn_source import CdnBackend, CdnDomainError, CdnSite, load_allowed_hosts, parse_domain
    from ferry.storage.registry import parse_spec

    if args.src_cdn_domain is None:
        if args.src_cdn_auth != "NONE":
            raise UsageError("--src-cdn-auth needs --src-cdn-domain")
        return source
    kind = args.src_cdn_auth.upper()
    spec = parse_spec(args.source)
    if spec.scheme != "s3":
        raise UsageError("--src-cdn-domain needs an s3:// source: its bucket lists the objects")
    if kind not in AUTH_TYPES:
        raise UsageError(f"--src-cdn-auth {args.src_cdn_auth!r} is not one of {', '.join(sorted(AUTH_TYPES))}")
    key = os.environ.get("FERRY_SRC_CDN_KEY") or None
    if kind in KEYED_TYPES and not key:
        raise UsageError(f"--src-cdn-auth {kind} signs with a key: set FERRY_SRC_CDN_KEY")
    try:
        parse_domain(args.src_cdn_domain)
    except CdnDomainError as exc:
        raise UsageError(f"--src-cdn-domain: {exc}") from None
    creds = CdnCredentials(key=key, ak=_secret(args, "src", "ak"), sk=_secret(args, "src", "sk"), bucket=spec.bucket)
    site = CdnSite(args.src_cdn_protocol, args.src_cdn_domain.strip(), kind, creds)
    return CdnBackend(source, site, allowed_hosts=load_allowed_hosts(), key_prefix=spec.prefix)


def _choice(flag: str, parse: Callable[[str], _T], raw: str, valid: Iterable[enum.Enum]) -> _T:
    try:
        return parse(raw)
    except UsageError:
        raise UsageError(f"{flag} {raw!r} is not one of {', '.join(str(v.value) for v in valid)}") from None


def _check_storage_class(args: argparse.Namespace, dst: Backend) -> None:
    """Refuse a class the destination does not have, before anything is copied."""
    from ferry.storage.profiles import get_profile
    from ferry.storage.registry import parse_spec

    name: str = args.storage_class
    if parse_spec(args.destination).scheme == "s3":
        profile = get_profile(args.dst_profile or "s3")
        known, where = profile.storage_class_names(), profile.title
    else:
        known, where = dst.capabilities.storage_classes, dst.name
    if name.upper() not in {k.upper() for k in known}:
        raise UsageError(f"--storage-class {name!r}: {where} has {', '.join(sorted(known))}")


def _collect_again() -> None:
    gc.freeze()  # what start-up built lives as long as the run: later collections need not walk it again
    gc.enable()


async def _migrate(args: argparse.Namespace) -> int:
    # Start-up (the engine's imports, then the job database's opening in its thread) allocates a great many
    # long-lived objects and hardly any garbage, yet the cyclic GC would walk them over and over (~7% of the
    # CPU of a short run, measured while that opening still imported SQLAlchemy). It is off until the database
    # is open (_collect_again).
    gc.disable()
    try:
        return await _migrate_run(args)
    finally:
        gc.enable()  # however the run ended (a usage error may come before the database is even opened)


async def _migrate_run(args: argparse.Namespace) -> int:
    from ferry.db.deferred import DeferredRepo
    from ferry.engine.compare import ConsistencyCheck, OverwriteMode
    from ferry.settings import data_dir, database_url, reports_dir, state_patience
    from ferry.storage.wrappers import RetryingBackend

    if args.concurrency < 1 or args.concurrency > 1024:
        raise UsageError("--concurrency must be between 1 and 1024")
    if not 1 <= args.restore_days <= 365 or not 0 < args.restore_poll <= 86400:
        raise UsageError("--restore-days must be between 1 and 365 and --restore-poll between 0 and 86400 seconds")
    if args.part_size < 5 or args.part_size > 5120:
        raise UsageError("--part-size must be between 5 and 5120 MiB")
    if args.memory_limit < 16:
        raise UsageError("--memory-limit must be at least 16 MiB")
    overwrite = _choice("--overwrite", OverwriteMode.parse, args.overwrite, OverwriteMode)
    consistency = _choice("--consistency-check", ConsistencyCheck.parse, args.consistency_check, ConsistencyCheck)
    since = _parse_since(args.migrate_since)
    src = RetryingBackend(_through_cdn(args, _open_side(args, "src", args.source)))
    dst = RetryingBackend(_open_side(args, "dst", args.destination))
    if args.storage_class is not None:
        _check_storage_class(args, dst)
    state = _state_dir(args.state_dir)
    base = state or data_dir()
    url = database_url(state)
    fresh = url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists()

    from ferry.engine.copier import CopyOptions
    from ferry.engine.pipeline import TransferOptions
    from ferry.engine.progress import Counters, TerminalProgress
    from ferry.engine.restores import RestorePolicy
    from ferry.service.transfers import run_migration

    # No job database yet means nothing to resume: the data can start moving while it is opened (over sqlite3
    # when fresh or current; an older schema brings in SQLAlchemy and Alembic, ~0.15 s of import). Opened only
    # now, so that work does not compete with our imports for the GIL.
    repo = DeferredRepo(url)
    repo.when_open(_collect_again)

    mib = 1024 * 1024
    opts = TransferOptions(
        overwrite=overwrite,
        copy=CopyOptions(
            consistency=consistency, metadata=args.metadata, storage_class=args.storage_class,
            multipart_threshold=max(args.multipart_threshold, 5) * mib, part_size=args.part_size * mib,
            reread_size_only=args.reread_size_only,
        ),
        migrate_since=since,
        concurrency=args.concurrency,
        memory_limit=args.memory_limit * mib,
        restore=RestorePolicy(args.restore_days, args.restore_poll) if args.restore else None,
        state_patience=state_patience(),
    )
    counters = Counters()
    bar = None
    if sys.stderr.isatty() and not args.no_progress:
        bar = TerminalProgress(counters, sys.stderr)
        bar.start()
    try:
        summary = await run_migration(src, dst, cast("JobRepo", repo), opts, report_dir=reports_dir(base),
                                      counters=counters, fresh=fresh, lock_dir=base)
    finally:
        if bar is not None:
            await bar.stop()
        await asyncio.gather(src.close(), dst.close(), return_exceptions=True)
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print(summary.describe())
        if summary.report:
            print(f"failed objects: {summary.report}")
    if summary.total == 0 and not summary.error:
        # Not an error (`aws s3 sync` and rclone end quietly too), but most often a mistyped bucket or prefix.
        print(f"ferry: warning: no objects found in {src.name}; check the bucket and the prefix", file=sys.stderr)
    if summary.error:
        print(f"ferry: error: {summary.error} (run the same command again to resume)", file=sys.stderr)
    return EXIT_OK if summary.failed == 0 and not summary.error else EXIT_FAILED


def _demo(args: argparse.Namespace) -> int:
    from ferry.demo import run_demo

    return run_demo(objects=args.objects, as_json=args.json)


def _sandbox(args: argparse.Namespace) -> int:
    from ferry.demo import run_sandbox
    from ferry.storage.profiles import get_profile

    buckets = args.bucket or ["source", "destination"]
    for name in buckets:
        get_profile("seaweedfs").check_bucket(name)  # before the store starts
    return run_sandbox(buckets, args.data_dir)


def _serve(args: argparse.Namespace) -> int:
    from ferry.runner.migration import RunnerSettings
    from ferry.runner.sync import env_number
    from ferry.serve import serve
    from ferry.settings import data_dir, database_url

    if not 0 < args.port < 65536:
        raise UsageError("--port must be between 1 and 65535")
    if not 1 <= args.max_tasks <= 100:
        raise UsageError("--max-tasks must be between 1 and 100")
    if not os.environ.get("FERRY_LOG_LEVEL"):
        logging.getLogger().setLevel(logging.INFO)
    base = data_dir()
    poll = env_number(os.environ, "FERRY_RESTORE_POLL_SECONDS", RunnerSettings.restore_poll_seconds)
    _check_distributed(base)
    return serve(base, database_url(), args.host, args.port,
                 RunnerSettings(max_tasks=args.max_tasks, restore_poll_seconds=poll))


def _worker(args: argparse.Namespace) -> int:
    from ferry.db.database import open_database
    from ferry.runner.broker import broker_url
    from ferry.runner.worker import WorkerSettings, run_worker
    from ferry.secrets import SecretBox
    from ferry.service.cluster_work import install_worker
    from ferry.settings import data_dir, database_url

    url = broker_url()
    if url is None:
        raise UsageError("ferry worker needs FERRY_BROKER_URL (redis://... or amqp://...)")
    db = database_url()
    if db.startswith("sqlite"):
        raise UsageError("ferry worker needs FERRY_DATABASE_URL pointing at the cluster's PostgreSQL database")
    if not 1 <= args.threads <= 256:
        raise UsageError("--threads must be between 1 and 256")
    if not 1 <= args.concurrency <= 1024:
        raise UsageError("--concurrency must be between 1 and 1024")
    if not os.environ.get("FERRY_LOG_LEVEL"):
        logging.getLogger().setLevel(logging.INFO)
    base = data_dir()
    _check_distributed(base)
    scratch = base / "worker"
    scratch.mkdir(mode=0o700, exist_ok=True)
    if not 1 <= args.unit_keys <= 100_000:
        raise UsageError("--unit-keys must be between 1 and 100000")
    if not 1 <= args.list_ranges <= 1000:
        raise UsageError("--list-ranges must be between 1 and 1000")
    if not 1.0 <= args.lease_ttl <= 3600:
        raise UsageError("--lease-ttl must be between 1 and 3600 seconds")
    settings = WorkerSettings(threads=args.threads, concurrency=args.concurrency, lease_ttl=args.lease_ttl,
                              heartbeat=min(3.0, args.lease_ttl / 3), drain_timeout=max(args.drain_timeout, 0.0),
                              extra={"unit_keys": args.unit_keys, "list_ranges": args.list_ranges})
    engine, box = open_database(db), SecretBox.load(base)
    # Group splits, reconciliation ranges and the sync event loop need the services' wiring (endpoints, task
    # creation, credentials), which the runner layer cannot import.
    install_worker(engine, box, base)
    return run_worker(engine, box, url, scratch, settings)


def _check_distributed(base: Path) -> None:
    """In distributed mode (FERRY_BROKER_URL), say in one line and stop when the database or broker cannot be
    reached (after FERRY_STARTUP_PATIENCE seconds of trying), the database is SQLite, or the master key is not
    the cluster's."""
    from ferry.runner.broker import broker_url
    from ferry.secrets import SecretBox
    from ferry.service.cluster_checks import wait_distributed
    from ferry.settings import database_url, startup_patience

    broker = broker_url()
    if broker is None:
        return
    wait_distributed(database_url(), broker, SecretBox.load(base), startup_patience(),
                     lambda line: print(f"ferry: {line}", file=sys.stderr, flush=True))


def _workers(args: argparse.Namespace) -> int:
    from ferry.db.database import open_database
    from ferry.service.cluster import cluster_status
    from ferry.settings import database_url

    engine = open_database(database_url())
    try:
        view = cluster_status(engine)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({
            "workers": [{"id": w.id, "role": w.role, "host": w.host, "pid": w.pid, "state": w.state,
                         "alive": w.alive, "units_in_flight": w.units_in_flight, "units_done": w.units_done,
                         "start_time": int(w.started_at * 1000), "heartbeat_time": int(w.heartbeat_at * 1000),
                         "heartbeat_age": w.heartbeat_age, "version": w.version} for w in view.workers],
            "count": len(view.workers), "queued_units": view.queued_units, "running_units": view.running_units}))
        return EXIT_OK
    head = ("ROLE", "HOST", "PID", "STATE", "IN FLIGHT", "DONE", "HEARTBEAT", "UP", "VERSION")
    rows = [(w.role, w.host, str(w.pid), w.state if w.alive else f"{w.state} (silent)", str(w.units_in_flight),
             str(w.units_done), f"{w.heartbeat_age:.0f}s ago", _duration(w.heartbeat_at - w.started_at), w.version)
            for w in view.workers]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip())
    alive = sum(w.alive for w in view.workers if w.role == "worker")
    print(f"{alive} worker(s) alive; units: {view.queued_units} queued, {view.running_units} running")
    return EXIT_OK


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _tenancy(args: argparse.Namespace) -> int:
    from ferry.db.database import open_database
    from ferry.secrets import SecretBox
    from ferry.service import credentials
    from ferry.settings import data_dir, database_url

    if getattr(args, "project_id", None) is not None:
        credentials.check_project_id(args.project_id)
    engine = open_database(database_url())
    try:
        if args.command == "tokens":
            return _tokens(engine, args)
        if args.action == "create":
            base = data_dir()
            made = credentials.create_credential(engine, SecretBox.load(base), args.project_id)
            print(json.dumps({"project_id": made.project_id, "access_key": made.access_key,
                              "secret_key": made.secret_key}))
            # A key made in one data directory is unknown to a `ferry serve` started with another.
            where = ("the FERRY_DATABASE_URL database" if os.environ.get("FERRY_DATABASE_URL")
                     else str(base / "ferry.db"))
            print(f"ferry: written to {where} (data directory {base}, FERRY_DATA_DIR); start `ferry serve` with "
                  "the same", file=sys.stderr)
            return EXIT_OK
        if args.action == "list":
            for info in credentials.list_credentials(engine, args.project_id):
                print(json.dumps({
                    "access_key": info.access_key, "project_id": info.project_id,
                    "created_at": datetime.fromtimestamp(info.created_at).astimezone().isoformat(),
                    "status": "revoked" if info.revoked_at else "active",
                }))
            return EXIT_OK
        if not credentials.revoke_credential(engine, args.access_key):
            raise UsageError("no active access key of that name")
        print(json.dumps({"access_key": args.access_key, "status": "revoked"}))
        return EXIT_OK
    finally:
        engine.dispose()


def _tokens(engine: Any, args: argparse.Namespace) -> int:
    from ferry.service import credentials

    def when(t: float) -> str:
        return datetime.fromtimestamp(t).astimezone().isoformat()

    if args.action == "create":
        token = credentials.create_token(engine, args.project_id, args.ttl, args.access_key)
        print(json.dumps({"token": token.token, "token_id": token.token_id, "project_id": token.project_id,
                          "access_key": token.access_key, "expires_at": when(token.expires_at)}))
    elif args.action == "list":
        for info in credentials.list_tokens(engine, args.project_id):
            print(json.dumps({"token_id": info.token_id, "project_id": info.project_id,
                              "access_key": info.access_key, "created_at": when(info.created_at),
                              "expires_at": when(info.expires_at), "status": info.status}))
    elif args.all:
        if args.token_id is not None or args.project_id is None:
            raise UsageError("tokens revoke: give either a token id, or --project-id P --all")
        count = credentials.revoke_project_tokens(engine, args.project_id)
        print(json.dumps({"project_id": args.project_id, "revoked": count}))
    else:
        if args.token_id is None or args.project_id is not None:
            raise UsageError("tokens revoke: give either a token id, or --project-id P --all")
        if not credentials.revoke_token(engine, args.token_id):
            raise UsageError("no active token of that id (see `ferry tokens list`)")
        print(json.dumps({"token_id": args.token_id, "status": "revoked"}))
    return EXIT_OK


def _redact(message: str, args: argparse.Namespace) -> str:
    for side in ("src", "dst"):
        for which in ("ak", "sk"):
            value = _secret(args, side, which) if hasattr(args, f"{side}_{which}") else None
            if value:
                message = message.replace(value, "***")
    return " ".join(message.split())


def _access_reason(exc: AccessError) -> str:
    """The refusal, the side it came from and what to fix there, naming the variables and flags to change."""
    side = {"source": "src", "destination": "dst"}.get(exc.side or "")
    if side is None:
        return f"{exc.message}; {exc.fix('the access key', 'the secret key')}"
    s = side.upper()
    return f"{exc.side}: {exc.message}; {exc.fix(f'FERRY_{s}_AK/--{side}-ak', f'FERRY_{s}_SK/--{side}-sk')}"


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where available: the copy hot path is event-loop bound (measured in bench/).

    `FERRY_EVENT_LOOP=asyncio` forces the standard loop (for comparison and debugging)."""
    if os.environ.get("FERRY_EVENT_LOOP") == "asyncio":
        return asyncio.run(coro)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we build for
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("FERRY_LOG_LEVEL", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "migrate":
            return _run_async(_migrate(args))
        if args.command == "demo":
            return _demo(args)
        if args.command == "sandbox":
            return _sandbox(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "worker":
            return _worker(args)
        if args.command in ("credentials", "tokens"):
            return _tenancy(args)
        if args.command == "workers":
            return _workers(args)
        parser.error(f"unknown command {args.command}")
    except UsageError as exc:
        print(f"ferry: error: {_redact(exc.message, args)}", file=sys.stderr)
        return EXIT_USAGE
    except AccessError as exc:
        print(f"ferry: error: {_redact(_access_reason(exc), args)}", file=sys.stderr)
        return EXIT_USAGE
    except FatalError as exc:
        print(f"ferry: error: {_redact(exc.message, args)}", file=sys.stderr)
        return EXIT_USAGE
    except LocalStateError as exc:
        # Nothing recorded is lost: the job stays resumable (unless its database itself is gone).
        hint = "; run the same command again to resume" if exc.passes else ""
        print(f"ferry: error: {_redact(exc.message, args)}{hint}", file=sys.stderr)
        return EXIT_FAILED
    except FerryError as exc:
        print(f"ferry: error: {_redact(exc.message, args)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("ferry: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        print(f"ferry: error: unexpected {type(exc).__name__}: {_redact(str(exc), args)}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
