"""Getting to ready: what needs no server is checked first, then the servers are waited for.

A server that is down comes back by itself, so the worker waits for it (unready, with backoff)
instead of exiting; refused credentials, a missing database or an old schema do not, so those
end the process at once with a hint. Addresses may be shown, passwords and DSNs never.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import structlog
from aiormq.exceptions import (
    AMQPError,
    AuthenticationError,
    IncompatibleProtocolError,
    ProbableAuthenticationError,
)

from worker.errors import DependencyUnavailable
from worker.events import ASSISTANT_REPLY, USER_MESSAGE, validator
from worker.health import Health
from worker.relay.retry import RetryPolicy
from worker.store.queries import queries

T = TypeVar("T")
log = structlog.get_logger("worker.startup")

# From half a second up to ten: a restarted server is found soon, a long outage costs a line
# every ten seconds. `attempts` is unused: the wait ends when the server answers or on SIGTERM.
STARTUP_BACKOFF = RetryPolicy(attempts=0, base_s=0.5, cap_s=10.0)
# A server that accepts the TCP connection and then says nothing is as good as down.
ATTEMPT_TIMEOUT_S = 10.0
# aiormq logs every failed connect at error level; while waiting, our own line says it.
_CONNECT_LOGGERS = ("aiormq.connection", "aio_pika.robust_connection")


class Server(StrEnum):
    """The servers the worker waits for at start; each names its log event (`waiting_for_...`),
    its URL variable and its default port."""

    POSTGRES = "postgres"
    RABBITMQ = "rabbitmq"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a server is, as far as it may be shown: host and port, never the credentials."""

    server: Server
    variable: str
    host: str
    port: int

    @classmethod
    def of(cls, server: Server, url: str) -> Endpoint:
        parts = urlsplit(url)
        default_port, variable = _DEFAULTS[server]
        try:
            port = parts.port or default_port
        except ValueError:  # a port that is not a number; the connect will say so
            port = default_port
        return cls(server, variable, parts.hostname or "localhost", port)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


_DEFAULTS = {Server.POSTGRES: (5432, "AW_DATABASE_URL"), Server.RABBITMQ: (5672, "AW_AMQP_URL")}
_NAMES = {Server.POSTGRES: "Postgres", Server.RABBITMQ: "RabbitMQ"}


class StoppedWhileWaiting(Exception):
    """SIGTERM came before the server did; nothing was started, so there is nothing to drain."""


def refused_credentials(exc: BaseException) -> Server | None:
    """The server that turned the credentials down, if that is what `exc` says."""
    if isinstance(exc, AuthenticationError | ProbableAuthenticationError):
        return Server.RABBITMQ
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):  # incl. bad password
        return Server.POSTGRES
    return None


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` says a server is down, not resolvable or not answering: worth waiting out."""
    if refused_credentials(exc) is not None:
        return False
    if isinstance(exc, AMQPError):
        # Not an AMQP server at all is no outage; it will not change by waiting.
        return isinstance(exc, ConnectionError) and not isinstance(exc, IncompatibleProtocolError)
    transient = (
        OSError,
        TimeoutError,
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError,
    )
    return isinstance(exc, transient)


def unreachable(exc: BaseException) -> Server | None:
    """The server that could not be reached, if that is what `exc` says. Only the AMQP client
    raises AMQP errors; a bare socket error is taken for Postgres."""
    if not is_outage(exc):
        return None
    return Server.RABBITMQ if isinstance(exc, AMQPError) else Server.POSTGRES


def explain(exc: BaseException, amqp_url: str, database_url: str) -> str | None:
    """The operator's hint for a connection failure: refused credentials or no answer.

    A store that lost its server mid-command says so as StoreUnavailable; the hint is read
    from the driver's error it carries.
    """
    if isinstance(exc, DependencyUnavailable) and exc.__cause__ is not None:
        exc = exc.__cause__
    urls = {Server.RABBITMQ: amqp_url, Server.POSTGRES: database_url}
    server = refused_credentials(exc)
    if server is not None:
        return f"{_NAMES[server]} refused the credentials in {_DEFAULTS[server][1]}"
    server = unreachable(exc)
    if server is not None:
        where = Endpoint.of(server, urls[server])
        return f"cannot reach {_NAMES[server]} at {where.address} ({where.variable})"
    return None


def reason(exc: BaseException) -> str:
    """A few words on why a connect failed; never the error's text, which may quote a DSN."""
    if isinstance(exc, socket.gaierror):
        return "host name not resolved"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncpg.CannotConnectNowError):
        return "server is starting up"
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return "too many connections"
    code = exc.errno if isinstance(exc, OSError) else None
    if isinstance(code, int) and code in errno.errorcode:
        return os.strerror(code).lower()
    return type(exc).__name__


def check_contract() -> None:
    """Loads the event schemas and the SQL now, so a worker that could not parse an event or
    talk to its database never reports ready (a missing file ends the process, named)."""
    validator(USER_MESSAGE)
    validator(ASSISTANT_REPLY)
    queries()


async def wait_for(
    endpoint: Endpoint,
    connect: Callable[[], Coroutine[Any, Any, T]],
    stop: asyncio.Event,
    health: Health,
    backoff: RetryPolicy = STARTUP_BACKOFF,
) -> T:
    """`connect()`'s result once the server answers; retried with capped backoff while it is
    unreachable, one log line an attempt. Other failures are raised at once."""
    name = endpoint.server.value
    attempt = 0
    with _quiet(_CONNECT_LOGGERS):
        while True:
            attempt += 1
            try:
                connected = await _attempt(name, connect, stop)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                delay_s = backoff.delay_s(attempt)
                why = reason(exc)
                health.waiting_for = f"{name}: {why}"
                log.warning(
                    f"waiting_for_{name}",
                    attempt=attempt,
                    retry_in_s=round(delay_s, 2),
                    reason=why,
                    address=endpoint.address,
                )
            else:
                health.waiting_for = None
                return connected
            if await _set_within(stop, delay_s):
                raise StoppedWhileWaiting(name)


async def _attempt(
    name: str, connect: Callable[[], Coroutine[Any, Any, T]], stop: asyncio.Event
) -> T:
    """One connect, given up when it outlasts ATTEMPT_TIMEOUT_S or when `stop` is set."""
    task = asyncio.create_task(connect())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait(
            {task, stopped}, timeout=ATTEMPT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise StoppedWhileWaiting(name) if stop.is_set() else TimeoutError()
    return task.result()


async def _set_within(event: asyncio.Event, timeout_s: float) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
