"""The baseline: a relay as most teams would first write it, kept only for comparison.

An aio-pika consumer that, per message, looks up the thread in its own Postgres table (creating
it on first contact), adds the message, calls the SDK's `runs.create_and_poll` with its defaults
(two SDK retries, `openai-poll-after-ms` read once or else 1 s polling), lists the run's
messages and publishes the reply to the worker's reply exchange and routing key, in the same
JSON shape. Prefetch = concurrency, one task per delivery, no batching, no adaptive polling,
ack after publishing; any error puts the message back on the queue ("try again later").

    python -m bench.baseline        # configured by the worker's AW_* variables (names below)

It logs `baseline_started` on stderr once it consumes. It is deliberately not hardened: the
benchmark counts what that costs (requests, CPU, "active run" errors, lost or doubled replies).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import aio_pika
import asyncpg
import openai
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

# The Assistants surface is deprecated in the SDK; the warning would be printed on every call.
warnings.filterwarnings("ignore", category=DeprecationWarning)

log = logging.getLogger("baseline")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    conversation_id text PRIMARY KEY,
    thread_id       text NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Config:
    """The baseline's settings, read from the worker's own AW_* variables, so the bench wires both
    contenders in the same way."""

    amqp_url: str
    database_url: str
    openai_base_url: str
    openai_api_key: str
    assistant_id: str
    concurrency: int
    inbound_queue: str
    outbound_exchange: str
    reply_routing_key: str

    @classmethod
    def from_env(cls) -> Config:
        env = os.environ
        return cls(
            amqp_url=env.get("AW_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
            database_url=env["AW_DATABASE_URL"],
            openai_base_url=env.get("AW_OPENAI_BASE_URL", "http://127.0.0.1:8900/v1"),
            openai_api_key=env.get("AW_OPENAI_API_KEY", "sk-standin"),
            assistant_id=env.get("AW_ASSISTANT_ID", "asst_default"),
            concurrency=int(env.get("AW_CONCURRENCY", "32")),
            inbound_queue=env.get("AW_INBOUND_QUEUE", "assistant.user_messages"),
            outbound_exchange=env.get("AW_OUTBOUND_EXCHANGE", "assistant.outbound"),
            reply_routing_key=env.get("AW_REPLY_ROUTING_KEY", "assistant_reply.v1"),
        )


class Baseline:
    """The naive relay itself: one delivery answered start to end by SDK calls, requeued on any
    error."""

    def __init__(
        self,
        config: Config,
        pool: asyncpg.Pool,
        client: openai.AsyncOpenAI,
        replies: AbstractExchange,
    ) -> None:
        self._config = config
        self._pool = pool
        self._client = client
        self._replies = replies

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            reply = await self.answer(json.loads(message.body))
            await self._replies.publish(
                aio_pika.Message(
                    json.dumps(reply).encode(),
                    message_id=reply["event_id"],
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=self._config.reply_routing_key,
            )
            await message.ack()
        except Exception as exc:  # noqa: BLE001 - the naive policy: put it back, try again
            log.warning("failed, requeued: %r", exc)
            await message.nack(requeue=True)

    async def answer(self, event: dict[str, Any]) -> dict[str, Any]:
        threads = self._client.beta.threads
        thread_id = await self.thread_for(event["conversation_id"])
        await threads.messages.create(thread_id, role="user", content=event["text"])
        run = await threads.runs.create_and_poll(
            thread_id=thread_id, assistant_id=self._config.assistant_id
        )
        page = await threads.messages.list(thread_id, run_id=run.id, order="asc")
        texts = [
            part.text.value
            for m in page.data
            if m.role == "assistant"
            for part in m.content
            if part.type == "text"
        ]
        return {
            "event_id": f"reply_{uuid.uuid4().hex}",
            "conversation_id": event["conversation_id"],
            "in_reply_to": [event["event_id"]],
            "status": run.status,
            "text": "\n\n".join(texts),
            "thread_id": thread_id,
            "run_id": run.id,
        }

    async def thread_for(self, conversation_id: str) -> str:
        found: str | None = await self._pool.fetchval(
            "SELECT thread_id FROM threads WHERE conversation_id = $1", conversation_id
        )
        if found is not None:
            return found
        thread = await self._client.beta.threads.create()
        # Two first messages may race here: the first insert wins and both use its thread.
        await self._pool.execute(
            "INSERT INTO threads VALUES ($1, $2) ON CONFLICT (conversation_id) DO NOTHING",
            conversation_id,
            thread.id,
        )
        stored: str = await self._pool.fetchval(
            "SELECT thread_id FROM threads WHERE conversation_id = $1", conversation_id
        )
        return stored


async def main() -> None:
    config = Config.from_env()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool = await asyncpg.create_pool(config.database_url)
    assert pool is not None
    await pool.execute(_SCHEMA)
    # SDK defaults on purpose: two retries, its own backoff, 600 s timeout.
    client = openai.AsyncOpenAI(base_url=config.openai_base_url, api_key=config.openai_api_key)
    connection = await aio_pika.connect_robust(config.amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=config.concurrency)
    replies = await channel.get_exchange(config.outbound_exchange)
    queue = await channel.get_queue(config.inbound_queue)
    baseline = Baseline(config, pool, client, replies)
    tag = await queue.consume(baseline.on_message)
    log.warning("baseline_started")
    await stop.wait()
    await queue.cancel(tag)
    await connection.close()
    await client.close()
    await pool.close()


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
    asyncio.run(main())
