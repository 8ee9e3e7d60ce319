"""Start-up checks of distributed mode: the database and broker reachable, PostgreSQL not SQLite, one master key.

Each failure is one line that names what to fix and never a secret: URLs are shown with their password
replaced by `***`, and the master key is compared by an HMAC fingerprint (SecretBox.fingerprint), never itself.
`ferry serve` (with FERRY_BROKER_URL) and `ferry worker` call `wait_distributed` before they start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from ferry.db.cluster_repo import SettingRepo
from ferry.db.database import open_database
from ferry.errors import FatalError, FerryError, UsageError
from ferry.runner.broker import BrokerSpec
from ferry.secrets import SecretBox

FINGERPRINT_SETTING: Final = "master_key_fingerprint"
CONNECT_TIMEOUT: Final = 3.0  # seconds for each reachability probe
BROKER_SCHEMES: Final = ("redis", "rediss", "amqp", "amqps")


class ClusterConfigError(FatalError):
    """Distributed mode is set up wrong (SQLite, an unknown broker, another master key): waiting will not help."""

    code = "FERRY.0520"


class ClusterUnreachableError(FerryError):
    """The database or the broker cannot be reached now: it may come up, so callers may try again."""

    code = "FERRY.0521"


def redact_url(url: str) -> str:
    """`url` with any password shown as `***` (user, host, port, path kept); unparseable text is hidden whole."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))
    except ValueError:
        return "<the URL, which cannot be parsed>"


def _reason(exc: BaseException, url: str) -> str:
    """The first line of a driver's error, without the URL's password should a driver repeat it."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***")
    text = " ".join(text.split()).rstrip(".")
    return text if len(text) <= 200 else text[:197] + "..."


def check_database_url(database_url: str) -> None:
    """Distributed mode needs a database every host reaches: PostgreSQL, not an SQLite file."""
    scheme = urlsplit(database_url).scheme.split("+", 1)[0]
    if scheme == "sqlite":
        raise ClusterConfigError(
            "distributed mode (FERRY_BROKER_URL is set) needs PostgreSQL: set FERRY_DATABASE_URL="
            "postgresql://USER:PASSWORD@HOST/DB (an SQLite file is one machine's; workers elsewhere cannot share it)")
    if scheme != "postgresql":
        raise ClusterConfigError(f"distributed mode needs a postgresql:// FERRY_DATABASE_URL, not "
                                 f"{redact_url(database_url)}")


def check_database(database_url: str) -> None:
    """Connect once (CONNECT_TIMEOUT) and run SELECT 1."""
    import psycopg

    url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(url, connect_timeout=int(CONNECT_TIMEOUT)) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any driver failure means "not reachable now", said in one line
        raise ClusterUnreachableError(
            f"cannot reach the database at {redact_url(database_url)}: {_reason(exc, database_url)}") from None


def check_broker(broker_url: str) -> None:
    """Connect to the broker once: a Redis PING, or an AMQP connection opened and closed."""
    scheme = urlsplit(broker_url).scheme
    if scheme not in BROKER_SCHEMES:
        raise ClusterConfigError(f"FERRY_BROKER_URL must be a redis:// or amqp:// URL, not {redact_url(broker_url)}")
    try:
        client_url = BrokerSpec.parse(broker_url).url  # without Ferry's own `namespace` parameter
    except UsageError as exc:
        raise ClusterConfigError(exc.message) from None
    try:
        if scheme.startswith("redis"):
            import redis

            client = redis.Redis.from_url(client_url, socket_connect_timeout=CONNECT_TIMEOUT,
                                          socket_timeout=CONNECT_TIMEOUT)
            try:
                client.ping()
            finally:
                client.close()
        else:
            import pika

            params = pika.URLParameters(client_url)
            params.socket_timeout = CONNECT_TIMEOUT
            params.connection_attempts = 1
            params.blocked_connection_timeout = CONNECT_TIMEOUT
            params.stack_timeout = 2 * CONNECT_TIMEOUT
            # pika logs a refused connection at ERROR with a traceback, five records deep; the one line below
            # says it instead.
            quiet = logging.getLogger("pika")  # its modules' loggers inherit this level
            was = quiet.level
            quiet.setLevel(logging.CRITICAL + 1)
            try:
                pika.BlockingConnection(params).close()
            finally:
                quiet.setLevel(was)
    except Exception as exc:  # any client failure means "not reachable now", said in one line
        raise ClusterUnreachableError(
            f"cannot reach the broker at {redact_url(broker_url)}: {type(exc).__name__}: "
            f"{_reason(exc, broker_url)}") from None


def check_master_key(database_url: str, box: SecretBox) -> None:
    """The first process of a cluster stores its key's fingerprint; every later one must match it."""
    mine = box.fingerprint()
    try:
        engine = open_database(database_url)
        try:
            stored = SettingRepo(engine).agree(FINGERPRINT_SETTING, mine)
        finally:
            engine.dispose()
    except Exception as exc:  # gone again since the probe, or refusing the schema upgrade: one line
        raise ClusterUnreachableError(
            f"cannot use the database at {redact_url(database_url)}: {_reason(exc, database_url)}") from None
    if stored != mine:
        raise ClusterConfigError(
            f"FERRY_MASTER_KEY is not the key this cluster uses (fingerprint {mine[:12]}, the cluster's "
            f"{stored[:12]}): start every server and worker with the same FERRY_MASTER_KEY; another key cannot "
            "decrypt the tasks' credentials")


def check_distributed(database_url: str, broker_url: str, box: SecretBox) -> None:
    """Every start-up check of distributed mode, cheapest first; raises ClusterConfigError (fix the setup) or
    ClusterUnreachableError (may pass later), each one line without secrets."""
    check_database_url(database_url)
    check_broker(broker_url)  # its scheme first: a wrong one is said before any waiting
    check_database(database_url)
    check_master_key(database_url, box)


def wait_distributed(database_url: str, broker_url: str, box: SecretBox, patience: float,
                     say: Callable[[str], None], *, every: float = 2.0,
                     clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """`check_distributed`, tried again every `every` seconds for `patience` seconds while what fails is only
    unreachable (a database or broker starting alongside); each failed try is said in one line."""
    deadline = clock() + patience
    while True:
        try:
            check_distributed(database_url, broker_url, box)
            return
        except ClusterUnreachableError as exc:
            if clock() + every > deadline:
                raise
            say(f"{exc.message}; trying again in {every:g} s")
            sleep(every)
