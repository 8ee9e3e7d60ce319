"""Azure Blob read clients side by side against one Azurite: Ferry's raw REST, azure-storage-blob (aio), obstore.

    .venv/bin/pip install -e ".[bench]"        # azure-storage-blob and obstore, for this script only
    .venv/bin/python bench/azure_clients.py                   # 1000 x 4 KiB, 4 x 64 MiB, 3 repeats
    .venv/bin/python bench/azure_clients.py --small 300 --large 2 --repeat 1   # smoke test

One Azurite (in memory, started like the tests start it) holds the objects, written once by Ferry. Each
client then, in turn (order rotated between repeats), lists the small objects, reads every small one whole
(32 at a time) and reads the large ones as streams (all at once); every byte is checked by length and MD5
(the large ones in the untimed warm-up round only).
Reported per client and phase: wall seconds, this process's CPU seconds (all threads: obstore works on Rust
threads), and objects/s or MiB/s. Azurite itself (Node, one thread) bounds the wall figures; the client's
CPU per object is what a faster server would expose, and what the copier's one event loop pays.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from ferry.objects import ObjectMeta
from ferry.sandbox import AzuriteServer
from ferry.storage.azure import AzureBackend
from ferry.storage.azure_auth import account_credentials

CONTAINER = "bench"
MiB = 1024 * 1024
Phase = Callable[[], Awaitable[int]]


async def fill(backend: AzureBackend, small: int, large: int) -> dict[str, str]:
    """Write the objects; their MD5s by key."""
    sums: dict[str, str] = {}
    sem = asyncio.Semaphore(32)

    async def one(key: str, data: bytes) -> None:
        async with sem:
            await backend.put(key, data, ObjectMeta(content_type="application/octet-stream"))
        sums[key] = hashlib.md5(data).hexdigest()

    await asyncio.gather(*(one(f"small/{i:05d}", os.urandom(4096)) for i in range(small)))
    for i in range(large):
        await one(f"large/{i}", os.urandom(64 * MiB))
    return sums


def check(key: str, data: bytes, sums: dict[str, str]) -> int:
    if hashlib.md5(data).hexdigest() != sums[key]:
        raise SystemExit(f"{key}: wrong bytes")
    return len(data)


VERIFY = [True]  # large objects are hashed in the untimed warm-up round only: MD5 on the event loop would
# measure hashlib (about 1.5 CPU-s per GiB), not the client


async def drain(key: str, pieces: AsyncIterator[Any], sums: dict[str, str]) -> int:
    h, n = hashlib.md5(), 0
    async for piece in pieces:
        if VERIFY[0]:
            h.update(piece)
        n += len(piece)
    if VERIFY[0] and h.hexdigest() != sums[key]:
        raise SystemExit(f"{key}: wrong bytes")
    return n


async def gather_limited(keys: list[str], read: Callable[[str], Awaitable[int]], limit: int) -> int:
    sem = asyncio.Semaphore(limit)

    async def one(key: str) -> int:
        async with sem:
            return await read(key)

    return sum(await asyncio.gather(*(one(k) for k in keys)))


def ferry_client(server: AzuriteServer, sums: dict[str, str]) -> tuple[dict[str, Phase], Callable[[], Awaitable[None]]]:
    creds = account_credentials(server.access_key, key=server.secret_key, endpoint=server.blob_endpoint)
    backend = AzureBackend(creds, CONTAINER)
    small = sorted(k for k in sums if k.startswith("small/"))
    large = sorted(k for k in sums if k.startswith("large/"))

    async def listing() -> int:
        return len([i async for i in backend.list("small/")])

    async def read_small(key: str) -> int:
        _, data = await backend.read_object(key)
        return check(key, data, sums)

    async def read_large(key: str) -> int:
        _, pieces = await backend.read_stream(key)
        return await drain(key, pieces, sums)

    return {
        "list": listing,
        "small": lambda: gather_limited(small, read_small, 32),
        "large": lambda: gather_limited(large, read_large, len(large)),
    }, backend.close


def sdk_client(server: AzuriteServer, sums: dict[str, str]) -> tuple[dict[str, Phase], Callable[[], Awaitable[None]]]:
    from azure.storage.blob.aio import ContainerClient

    client = ContainerClient.from_connection_string(server.connection_string, CONTAINER,
                                                    max_single_get_size=64 * MiB)
    small = sorted(k for k in sums if k.startswith("small/"))
    large = sorted(k for k in sums if k.startswith("large/"))

    async def listing() -> int:
        return len([b async for b in client.list_blobs(name_starts_with="small/")])

    async def read_small(key: str) -> int:
        stream = await client.download_blob(key)
        return check(key, await stream.readall(), sums)

    async def read_large(key: str) -> int:
        stream = await client.download_blob(key, max_concurrency=1)
        return await drain(key, stream.chunks(), sums)

    return {
        "list": listing,
        "small": lambda: gather_limited(small, read_small, 32),
        "large": lambda: gather_limited(large, read_large, len(large)),
    }, client.close


def obstore_client(server: AzuriteServer, sums: dict[str, str]
                   ) -> tuple[dict[str, Phase], Callable[[], Awaitable[None]]]:
    import obstore
    from obstore.store import AzureStore

    store = AzureStore(CONTAINER, account_name=server.access_key, access_key=server.secret_key,
                       endpoint=server.blob_endpoint, client_options={"allow_http": True})
    small = sorted(k for k in sums if k.startswith("small/"))
    large = sorted(k for k in sums if k.startswith("large/"))

    async def listing() -> int:
        n = 0
        async for batch in obstore.list(store, "small/"):
            n += len(batch)
        return n

    async def read_small(key: str) -> int:
        got = await obstore.get_async(store, key)
        return check(key, bytes(await got.bytes_async()), sums)

    async def read_large(key: str) -> int:
        got = await obstore.get_async(store, key)
        return await drain(key, got.stream(min_chunk_size=4 * MiB), sums)

    async def close() -> None:
        return None

    return {
        "list": listing,
        "small": lambda: gather_limited(small, read_small, 32),
        "large": lambda: gather_limited(large, read_large, len(large)),
    }, close


CLIENTS = {"ferry": ferry_client, "azure-sdk": sdk_client, "obstore": obstore_client}


async def run(args: argparse.Namespace) -> dict[str, dict[str, list[dict[str, float]]]]:
    with AzuriteServer() as server:
        server.create_bucket(CONTAINER)
        creds = account_credentials(server.access_key, key=server.secret_key, endpoint=server.blob_endpoint)
        writer = AzureBackend(creds, CONTAINER)
        sums = await fill(writer, args.small, args.large)
        await writer.close()
        names = [c for c in CLIENTS if c in args.clients]
        results: dict[str, dict[str, list[dict[str, float]]]] = {c: {} for c in names}
        for rep in range(args.repeat + 1):  # the first round warms Azurite and the clients up, untimed
            order = names[rep % len(names):] + names[:rep % len(names)]
            VERIFY[0] = rep == 0
            for name in order:
                phases, close = CLIENTS[name](server, sums)
                try:
                    for phase, go in phases.items():
                        cpu, wall = time.process_time(), time.perf_counter()
                        amount = await go()
                        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                        if rep:
                            results[name].setdefault(phase, []).append(
                                {"wall": wall, "cpu": cpu, "amount": amount})
                finally:
                    await close()
        return results


def report(results: dict[str, dict[str, list[dict[str, float]]]], args: argparse.Namespace) -> None:
    print(f"\n{args.small} x 4 KiB and {args.large} x 64 MiB on Azurite; median of {args.repeat}")
    print(f"{'client':<10} {'phase':<6} {'wall s':>8} {'cpu s':>8} {'rate':>16} {'cpu/obj or /GiB':>18}")
    for name, phases in results.items():
        for phase, runs in phases.items():
            wall = statistics.median(r["wall"] for r in runs)
            cpu = statistics.median(r["cpu"] for r in runs)
            amount = runs[0]["amount"]
            if phase == "large":
                rate = f"{amount / MiB / wall:,.0f} MiB/s"
                per = f"{cpu / (amount / 1024 / MiB):.2f} s/GiB"
            else:
                count = amount / 4096 if phase == "small" else amount
                rate = f"{count / wall:,.0f} " + ("obj/s" if phase == "small" else "keys/s")
                per = f"{cpu / count * 1e6:,.0f} us/obj"
            print(f"{name:<10} {phase:<6} {wall:>8.2f} {cpu:>8.2f} {rate:>16} {per:>18}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=list(CLIENTS))
    args = parser.parse_args()
    results = uvloop.run(run(args))
    report(results, args)
    out = Path(__file__).with_name("out")
    out.mkdir(exist_ok=True)
    (out / "azure_clients.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
