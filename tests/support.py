"""Helpers shared by the tests: where the real servers are, and small admin operations."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel

from standin import StandIn
from worker.ops.helpdesk import publish_user_message, wait_for_replies
from worker.settings import Settings, Topology

PG_ADMIN_DSN = os.environ.get(
    "AW_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("AW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
API_KEY = "sk-test-secret-key-0123456789"


def tagged_topology(tag: str) -> Topology:
    """Exchange and queue names of their own, so runs never share broker state."""
    return Topology(
        inbound_exchange=f"{tag}.inbound",
        inbound_queue=f"{tag}.user_messages",
        outbound_exchange=f"{tag}.outbound",
        reply_queue=f"{tag}.replies",
        handoff_queue=f"{tag}.handoffs",
        dead_letter_exchange=f"{tag}.dead_letter",
        dead_letter_queue=f"{tag}.dead_letter",
    )


def dsn_for(database: str) -> str:
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + database


async def admin_sql(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def publish(channel: AbstractChannel, topology: Topology, **event: Any) -> dict[str, Any]:
    """Publishes a user_message.v1 with a fresh event_id unless one is given."""
    event.setdefault("event_id", f"evt-{uuid.uuid4().hex[:12]}")
    await publish_user_message(channel, topology, event)
    return event


async def publish_raw(channel: AbstractChannel, topology: Topology, body: bytes) -> None:
    exchange = await channel.get_exchange(topology.inbound_exchange, ensure=False)
    await exchange.publish(aio_pika.Message(body), routing_key=topology.inbound_routing_key)


async def replies_for(
    channel: AbstractChannel, topology: Topology, event_ids: set[str], timeout_s: float = 15
) -> list[dict[str, Any]]:
    queue = await channel.get_queue(topology.reply_queue)
    try:
        return await wait_for_replies(queue, event_ids, timeout_s)
    except TimeoutError:
        raise AssertionError(f"no reply within {timeout_s} s for {sorted(event_ids)}") from None


async def drain(channel: AbstractChannel, queue_name: str, quiet_s: float = 0.5) -> list[Message]:
    """Everything that arrives in `queue_name` until `quiet_s` of silence (acknowledged)."""
    queue = await channel.get_queue(queue_name, ensure=False)
    got: list[Message] = []
    while True:
        message = await queue.get(fail=False, timeout=5)
        if message is None:
            await asyncio.sleep(quiet_s)
            message = await queue.get(fail=False, timeout=5)
            if message is None:
                return got
        await message.ack()
        got.append(Message(message.body, dict(message.headers or {}), message.message_id))


async def wait_for_dead_letters(
    channel: AbstractChannel, topology: Topology, count: int, timeout_s: float = 15
) -> list[Message]:
    return await take_messages(channel, topology.dead_letter_queue, count, timeout_s)


async def take_messages(
    channel: AbstractChannel, queue_name: str, count: int, timeout_s: float = 15
) -> list[Message]:
    """The next `count` messages of the queue, acknowledged, as they came."""
    queue = await channel.get_queue(queue_name, ensure=False)
    got: list[Message] = []
    async with asyncio.timeout(timeout_s):
        while len(got) < count:
            message = await queue.get(fail=False, timeout=5)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            await message.ack()
            got.append(Message(message.body, dict(message.headers or {}), message.message_id))
    return got


@dataclass(frozen=True)
class Message:
    body: bytes
    headers: dict[str, Any]
    message_id: str | None

    def json(self) -> Any:
        return json.loads(self.body)


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    t = settings.topology
    env = {
        **os.environ,
        "AW_AMQP_URL": settings.amqp_url.get_secret_value(),
        "AW_DATABASE_URL": settings.database_url.get_secret_value(),
        "AW_OPENAI_BASE_URL": settings.openai_base_url,
        "AW_OPENAI_API_KEY": API_KEY,
        "AW_BACKEND": settings.backend.value,
        "AW_INBOUND_EXCHANGE": t.inbound_exchange,
        "AW_INBOUND_QUEUE": t.inbound_queue,
        "AW_OUTBOUND_EXCHANGE": t.outbound_exchange,
        "AW_REPLY_QUEUE": t.reply_queue,
        "AW_HANDOFF_QUEUE": t.handoff_queue,
        "AW_DEAD_LETTER_EXCHANGE": t.dead_letter_exchange,
        "AW_DEAD_LETTER_QUEUE": t.dead_letter_queue,
        "AW_POLL_INITIAL_MS": "30",
        "AW_SHUTDOWN_GRACE_S": "5",
        "AW_LOG_FORMAT": "json",
        "AW_HEALTH_HOST": "127.0.0.1",
        "AW_HEALTH_PORT": "0",
    }
    env.update(extra)
    return env


async def run_cli(
    settings: Settings, *args: str, stdin: bytes | None = None
) -> tuple[int, str, str]:
    """`assistant-worker ARGS` as an operator runs it, against this test's services: exit code,
    stdout, stderr. Wide enough that an error box does not fold the message it frames."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=worker_env(settings, COLUMNS="200"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    """Waits until `condition()` holds; fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not true within {timeout_s} s"
        await asyncio.sleep(0.02)


def user_texts(standin: StandIn, backend: str, thread_id: str) -> list[str]:
    """The user texts in the stand-in's thread (Assistants) or Conversation, oldest first."""
    if backend == "responses":
        return [
            "".join(part.get("text", "") for part in item["content"])
            for item in standin.conversation_items(thread_id)
            if item.get("type") == "message" and item.get("role") == "user"
        ]
    return [
        "".join(part["text"]["value"] for part in m["content"] if part["type"] == "text")
        for m in standin.thread_messages(thread_id)
        if m["role"] == "user"
    ]
