"""Failed-object lists written into the destination bucket, where OMS users look for them (OMS's own layout)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import IO, Final

from ferry.objects import ObjectMeta
from ferry.storage.base import Backend

# The error code of a list that could not be written into the bucket (OMS: "appending the failed object
# information to OBS failed"); the task itself is not failed by it.
UPLOAD_FAILED: Final = "S3M.0307"
_PIECE: Final = 1024 * 1024
_META: Final = ObjectMeta(content_type="text/plain; charset=utf-8")


def task_list_key(task_name: str, group_id: str | None, when: float) -> str:
    """Where OMS's user guide puts a task's list: oms/task/<task name>/failed_object_lists/<ms>.failed_list.txt,
    and for a task of a group oms/task_group/<group id>/failed_object_lists/<task name>/<ms>.failed_list.txt."""
    stamp = f"{int(when * 1000)}.failed_list.txt"
    if group_id:
        return f"oms/task_group/{group_id}/failed_object_lists/{task_name}/{stamp}"
    return f"oms/task/{task_name}/failed_object_lists/{stamp}"


def sync_list_key(sync_task_id: str) -> str:
    """A sync task's one list, rewritten as its keys fail or recover (OMS writes one per sync sub-task, under
    oms/sync_task/<sync task id>/failed_object_lists/; Ferry has no sub-tasks)."""
    return f"oms/sync_task/{sync_task_id}/failed_object_lists/failed_list.txt"


async def upload(store: Backend, key: str, fh: IO[bytes], size: int) -> None:
    """Write the `size` bytes of `fh` (from its start) to `key`, streamed: a list may be large."""

    async def body() -> AsyncGenerator[bytes, None]:
        await asyncio.to_thread(fh.seek, 0)
        left = size
        while left:
            piece = await asyncio.to_thread(fh.read, min(_PIECE, left))
            if not piece:
                return  # shorter than announced: the store refuses the body
            left -= len(piece)
            yield piece

    await store.put_stream(key, size, body, _META)
