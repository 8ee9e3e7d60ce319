"""The message broker of distributed mode: a Dramatiq broker from FERRY_BROKER_URL and the one actor, `ferry_unit`.

A message carries a work unit's id and nothing else (never a key list, never a credential): the unit itself is
a row in the shared database, and whoever receives the message claims it there with one conditional UPDATE.
Dramatiq delivers at least once; a duplicate or late message finds the unit claimed or finished and does
nothing. Dramatiq's own retries and time limit are off: a unit is retried by our resend of units whose lease ran
out (see runner.distributed), and bounded by its lease, which the worker renews from inside the unit.

`redis://host:port/db` and `amqp://user:password@host:port/vhost` are understood; a `namespace=NAME` query
parameter keeps the queues of one cluster apart from another's on a shared broker (Redis key prefix, RabbitMQ
queue-name prefix). The URL may hold a password: it is only ever shown through `redact`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ferry.errors import UsageError

if TYPE_CHECKING:  # Dramatiq is imported when a broker is made: the embedded default never pays for it
    import dramatiq
    from dramatiq.broker import Broker

ACTOR: Final = "ferry_unit"
QUEUE: Final = "ferry-units"
_SCHEMES: Final = ("redis", "rediss", "amqp", "amqps")

__all__ = ["ACTOR", "QUEUE", "BrokerSpec", "Sender", "broker_url", "make_broker", "redact", "unit_actor"]


def broker_url() -> str | None:
    """`FERRY_BROKER_URL`, or None (the embedded default: no broker, tasks run in the server's process)."""
    raw = os.environ.get("FERRY_BROKER_URL", "").strip()
    return raw or None


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***` (for messages and logs)."""
    return re.sub(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]*@", r"\1***@", text, flags=re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class BrokerSpec:
    """A parsed broker URL: the URL the client library gets (namespace taken out), and the namespace."""

    scheme: str
    url: str
    namespace: str

    @classmethod
    def parse(cls, raw: str) -> BrokerSpec:
        parts = urlsplit(raw)
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise UsageError(f"FERRY_BROKER_URL must start with redis:// or amqp:// (got {redact(raw)!r})")
        query = parse_qsl(parts.query, keep_blank_values=True)
        namespace = next((v for k, v in query if k == "namespace"), "") or "ferry"
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", namespace):
            raise UsageError("the namespace of FERRY_BROKER_URL may hold letters, digits, '_', '.' and '-' only")
        rest = urlencode([(k, v) for k, v in query if k != "namespace"])
        return cls(scheme, urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), namespace)

    @property
    def queue(self) -> str:
        # Redis keys carry the namespace already; RabbitMQ has no namespace, so it goes into the queue's name.
        return QUEUE if self.scheme.startswith("redis") else f"{self.namespace}.{QUEUE}"


def make_broker(raw_url: str, *, heartbeat_timeout_ms: int = 15_000) -> tuple[Broker, BrokerSpec]:
    """A Dramatiq broker for `raw_url` without Dramatiq's retry, time-limit and age-limit middleware.

    `heartbeat_timeout_ms` (Redis): how long a worker may be silent before the messages it took but did not
    acknowledge go back to the queue. Our own resend covers the same case from the database's side."""
    spec = BrokerSpec.parse(raw_url)
    broker: Broker
    if spec.scheme.startswith("redis"):
        from dramatiq.brokers.redis import RedisBroker

        broker = RedisBroker(  # type: ignore[no-untyped-call]
            url=spec.url, namespace=spec.namespace, middleware=[], heartbeat_timeout=heartbeat_timeout_ms,
            socket_timeout=10, socket_connect_timeout=5, health_check_interval=10)
    else:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=spec.url, middleware=[])
    return broker, spec


def unit_actor(broker: Broker, spec: BrokerSpec, fn: Callable[[int], None] | None = None) -> dramatiq.Actor[Any, Any]:
    """The `ferry_unit(unit_id)` actor on `broker`: `fn` runs the unit (a worker); a sender passes none."""

    import dramatiq

    def refuse(unit_id: int) -> None:  # a process that only sends never consumes
        raise RuntimeError("this process does not run units")

    return dramatiq.Actor(fn or refuse, broker=broker, actor_name=ACTOR, queue_name=spec.queue, priority=0,
                          options={"max_retries": 0})


class Sender:
    """Sends unit ids to the workers (the coordinator's side of the broker)."""

    def __init__(self, raw_url: str) -> None:
        self.broker, self.spec = make_broker(raw_url)
        self.actor = unit_actor(self.broker, self.spec)

    def send(self, unit_ids: Iterable[int]) -> int:
        """Send one message per id; how many were sent. Raises when the broker is unreachable
        (the caller sends them again later: the units wait in the database meanwhile)."""
        sent = 0
        for unit_id in unit_ids:
            self.actor.send(int(unit_id))
            sent += 1
        return sent

    def close(self) -> None:
        self.broker.close()
