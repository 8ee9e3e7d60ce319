"""What a finished task or group hands to the notifier it was given (wired in serve.py: SMN's `publish_end`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RunEnd:
    """A finished run of a task or group whose stored `smn_config` asked for a notification."""

    project_id: str
    config: dict[str, Any]  # the stored smn_config
    succeeded: bool
    name: str
    started_at: float | None
    seconds: float
    bytes_done: int
    src_bucket: str | None
    dst_bucket: str
    list_file: dict[str, Any] | None = None
    records: dict[str, Any] | None = None


# Publishes the message if the config's trigger conditions ask for it (never raising); returns the outcome, which
# the runner stores as `smn_result` so that a run is announced once.
EndNotifier = Callable[[RunEnd], dict[str, Any]]
