"""The dead-letter queue as operators see it: read, filter, move back, export, import, purge.

Reading never removes or reorders anything: messages are taken unacknowledged on a channel of
their own and handed back when it closes; the dead-letter queue is a classic queue, which puts
returned messages back in their places (a quorum queue would not). Moving publishes to the
destination with publisher confirms *before* removing from the dead-letter queue, so a move
killed at any moment loses nothing and at worst leaves a copy in both places, which the
worker's idempotent intake absorbs.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from worker.errors import ReasonCode
from worker.headers import json_safe
from worker.relay.outbound import (
    H_CONVERSATION_ID,
    H_ERROR,
    H_EVENT_ID,
    H_FORCE,
    H_LAST_FAILURE,
    H_ORIGINAL_ROUTING_KEY,
    H_REASON,
    H_REPLAY_COUNT,
)
from worker.settings import Topology

# RabbitMQ's own reasons (x-death), for what it dead-lettered itself: a message that kept
# crashing workers reaches the delivery limit. "unknown" is a message with no reason at all.
BROKER_REASONS = ("delivery_limit", "rejected", "expired", "maxlen")
REASONS: tuple[str, ...] = (*(str(code) for code in ReasonCode), *BROKER_REASONS, "unknown")
# The bytes and properties are what is wrong, and a replay sends them as they are: these fail
# the same way again (unless the worker was changed to accept them).
UNFIXABLE = frozenset(
    {ReasonCode.MALFORMED_JSON, ReasonCode.SCHEMA_INVALID, ReasonCode.MESSAGE_ID_MISMATCH}
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered message, as found (position 1 is the head of the queue)."""

    position: int
    body: bytes
    headers: dict[str, Any]
    message_id: str | None = None
    content_type: str | None = None
    routing_key: str = ""

    @classmethod
    def from_message(cls, message: AbstractIncomingMessage, position: int) -> DeadLetter:
        return cls(
            position=position,
            body=message.body,
            headers={str(k): json_safe(v) for k, v in (message.headers or {}).items()},
            message_id=message.message_id,
            content_type=message.content_type,
            routing_key=message.routing_key or "",
        )

    @property
    def _death(self) -> dict[str, Any]:
        deaths = self.headers.get("x-death") or [{}]
        return dict(deaths[0])

    @property
    def reason(self) -> str:
        """The worker's reason code, or RabbitMQ's own (e.g. delivery_limit)."""
        return str(self.headers.get(H_REASON) or self._death.get("reason") or "unknown")

    @property
    def error(self) -> str:
        return str(self.headers.get(H_ERROR, ""))

    @property
    def event_id(self) -> str | None:
        value = self.headers.get(H_EVENT_ID) or self.message_id
        return str(value) if value else None

    @property
    def conversation_id(self) -> str | None:
        value = self.headers.get(H_CONVERSATION_ID)
        return str(value) if value else None

    @property
    def attempts(self) -> int:
        return int(self.headers.get("x-aw-attempts") or self._death.get("count") or 1)

    @property
    def replay_count(self) -> int:
        value = self.headers.get(H_REPLAY_COUNT, 0)
        return value if isinstance(value, int) else 0

    @property
    def failed_at(self) -> datetime | None:
        raw = self.headers.get(H_LAST_FAILURE) or self._death.get("time")
        if raw is None:
            return None
        try:
            return datetime.fromisoformat(str(raw))
        except ValueError:
            return None

    @property
    def original_routing_key(self) -> str | None:
        key = self.headers.get(H_ORIGINAL_ROUTING_KEY)
        if key:
            return str(key)
        keys = self._death.get("routing-keys") or []
        return str(keys[0]) if keys else None

    def to_record(self) -> dict[str, Any]:
        """Lossless JSON: the body as base64, headers and properties as they were."""
        return {
            "message_id": self.message_id,
            "content_type": self.content_type,
            "routing_key": self.routing_key,
            "headers": self.headers,
            "body_base64": base64.b64encode(self.body).decode(),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], position: int = 0) -> DeadLetter:
        return cls(
            position=position,
            body=base64.b64decode(record["body_base64"]),
            headers=dict(record.get("headers") or {}),
            message_id=record.get("message_id"),
            content_type=record.get("content_type"),
            routing_key=record.get("routing_key") or "",
        )

    def to_message(self, headers: dict[str, Any] | None = None) -> aio_pika.Message:
        return aio_pika.Message(
            self.body,
            headers=self.headers if headers is None else headers,
            message_id=self.message_id,
            content_type=self.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters an operation applies to; empty fields match everything."""

    reasons: frozenset[str] = frozenset()
    conversations: frozenset[str] = frozenset()
    event_ids: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.reasons and letter.reason not in self.reasons:
            return False
        if self.conversations and letter.conversation_id not in self.conversations:
            return False
        if self.event_ids and letter.event_id not in self.event_ids:
            return False
        return self._in_time_range(letter.failed_at)

    def _in_time_range(self, when: datetime | None) -> bool:
        if self.since is None and self.until is None:
            return True
        if when is None:
            return False
        return (self.since is None or when >= self.since) and (
            self.until is None or when <= self.until
        )


@dataclass(frozen=True, slots=True)
class ReplayRules:
    """Which matching events a replay refuses: those replayed `max_replays` times already
    (poison protection), unless forced."""

    force: bool = False
    max_replays: int = 3

    def refuses(self, letter: DeadLetter) -> bool:
        return letter.replay_count >= self.max_replays and not self.force


def replay_plan(
    found: Iterable[DeadLetter], selection: Selection, rules: ReplayRules
) -> list[DeadLetter]:
    """What a replay of `selection` would take up (move or refuse), head first, worked out from
    a read of the queue: the replay's progress total, and what to warn about before it moves
    anything. `--limit` counts the events moved, as in the replay itself."""
    plan: list[DeadLetter] = []
    moving = 0
    for letter in found:
        if selection.limit is not None and moving >= selection.limit:
            break
        if selection.matches(letter):
            plan.append(letter)
            moving += not rules.refuses(letter)
    return plan


@dataclass
class MoveReport:
    """What a replay (or a purge) did, message by message."""

    moved: list[DeadLetter] = field(default_factory=list)
    refused: list[DeadLetter] = field(default_factory=list)
    examined: int = 0

    @property
    def taken_up(self) -> int:
        """Matching events handled so far, moved or refused: a replay's progress."""
        return len(self.moved) + len(self.refused)

    def as_json(self) -> dict[str, Any]:
        return {
            "examined": self.examined,
            "moved": [letter.event_id for letter in self.moved],
            "refused": [letter.event_id for letter in self.refused],
        }


Progress = Callable[[MoveReport], None]


class NotFound(Exception):
    """A queue or exchange the operation needs does not exist (a wrong name in the settings, or
    the topology was never declared); the CLI names it and its variable, and exits 4."""

    def __init__(self, kind: str, name: str, variable: str) -> None:
        super().__init__(f"{kind} {name!r}")
        self.kind = kind
        self.name = name
        self.variable = variable


class DeadLetterQueue:
    """The operators' operations on the dead-letter queue: read, replay, purge and add, each on a
    channel of its own, so whatever it does not acknowledge goes back in its place."""

    def __init__(self, connection: AbstractConnection, topology: Topology) -> None:
        self._connection = connection
        self._topology = topology

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[tuple[AbstractChannel, aio_pika.abc.AbstractQueue]]:
        """A channel of its own: whatever is not acknowledged returns to the queue, in place,
        when it closes (also when this process dies)."""
        channel = await self._connection.channel(publisher_confirms=True)
        try:
            try:
                queue = await channel.get_queue(self._topology.dead_letter_queue)
            except aio_pika.exceptions.ChannelClosed:
                raise NotFound(
                    "dead-letter queue", self._topology.dead_letter_queue, "AW_DEAD_LETTER_QUEUE"
                ) from None
            yield channel, queue
        finally:
            if not channel.is_closed:
                await channel.close()

    async def _exchange(
        self, channel: AbstractChannel, name: str, variable: str
    ) -> aio_pika.abc.AbstractExchange:
        try:
            return await channel.get_exchange(name)
        except aio_pika.exceptions.ChannelClosed:
            raise NotFound("exchange", name, variable) from None

    async def _walk(
        self, queue: aio_pika.abc.AbstractQueue
    ) -> AsyncIterator[tuple[DeadLetter, AbstractIncomingMessage]]:
        """The messages that were in the queue when the walk began, head first.

        Bounded by the depth at the start, so a replayed event that fails again (and is
        dead-lettered behind us) is not met a second time in the same walk.
        """
        depth = (await queue.declare()).message_count or 0
        for position in range(1, depth + 1):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                return
            yield DeadLetter.from_message(message, position), message

    async def read(self, selection: Selection = Selection()) -> list[DeadLetter]:
        """Every matching dead letter, head first; the queue is left exactly as it was."""
        found = []
        async with self._session() as (_, queue):
            async for letter, _ in self._walk(queue):
                if selection.matches(letter):
                    found.append(letter)
                    if selection.limit is not None and len(found) >= selection.limit:
                        break
        return found

    async def replay(
        self,
        selection: Selection,
        *,
        rate_per_s: float | None = None,
        force: bool = False,
        max_replays: int = 3,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> MoveReport:
        """Moves matching events back to the inbound exchange, counting each replay."""
        report = MoveReport()
        pacer = ReplayPacer(rate_per_s)
        rules = ReplayRules(force, max_replays)
        async with self._session() as (channel, queue):
            inbound = await self._exchange(
                channel, self._topology.inbound_exchange, "AW_INBOUND_EXCHANGE"
            )
            async for letter, message in self._walk(queue):
                report.examined += 1
                if not selection.matches(letter):
                    continue
                if rules.refuses(letter):
                    report.refused.append(letter)
                elif not dry_run:
                    await pacer.wait()
                    headers = _replay_headers(letter, force)
                    routing_key = letter.original_routing_key or self._topology.inbound_routing_key
                    await inbound.publish(letter.to_message(headers), routing_key=routing_key)
                    await message.ack()  # only now: the destination has confirmed it
                    report.moved.append(letter)
                else:
                    report.moved.append(letter)
                if progress is not None:
                    progress(report)
                if selection.limit is not None and len(report.moved) >= selection.limit:
                    break
        return report

    async def purge(self, selection: Selection) -> MoveReport:
        report = MoveReport()
        async with self._session() as (_, queue):
            async for letter, message in self._walk(queue):
                report.examined += 1
                if selection.matches(letter):
                    await message.ack()
                    report.moved.append(letter)
                    if selection.limit is not None and len(report.moved) >= selection.limit:
                        break
        return report

    async def add(self, letters: Iterable[DeadLetter]) -> int:
        """Puts exported dead letters into this cluster's dead-letter queue (import)."""
        count = 0
        async with self._session() as (channel, _):
            exchange = await self._exchange(
                channel, self._topology.dead_letter_exchange, "AW_DEAD_LETTER_EXCHANGE"
            )
            for letter in letters:
                await exchange.publish(letter.to_message(), routing_key=letter.routing_key)
                count += 1
        return count


def _replay_headers(letter: DeadLetter, force: bool) -> dict[str, Any]:
    headers = {**letter.headers, H_REPLAY_COUNT: letter.replay_count + 1}
    if force:
        headers[H_FORCE] = "true"
    else:
        headers.pop(H_FORCE, None)
    return headers


class ReplayPacer:
    """Spaces replayed events to at most `rate_per_s` (None: as fast as possible), so a large
    replay does not hit the workers, and the API behind them, with a backlog all at once."""

    def __init__(self, rate_per_s: float | None) -> None:
        self._interval_s = 1 / rate_per_s if rate_per_s else 0.0
        self._last = 0.0

    async def wait(self) -> None:
        delay = self._last + self._interval_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self._last = time.monotonic()
