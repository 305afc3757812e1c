"""`make demo`: the stand-in, a worker and a scripted helpdesk conversation, in one process."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import aclosing
from typing import Any

import aio_pika
from rich.console import Console

from worker.helpdesk import publish_user_message, replies
from worker.migrate import migrate
from worker.service import WorkerService
from worker.settings import Settings
from worker.standin import StandIn, StandInConfig

SCRIPT: tuple[tuple[str, str], ...] = (
    ("A", "Hi, my order #1042 has not arrived yet."),
    ("B", "How do I reset my password?"),
    ("A", "It was supposed to come on Monday."),
    ("B", "I never got the reset email."),
    ("A", "Thanks for checking!"),
)


async def play(settings: Settings, *, standin_port: int, timeout_s: float) -> bool:
    console = Console()
    await migrate(settings.database_url.get_secret_value())
    standin = StandIn(StandInConfig(run_duration_ms=300))
    base_url = await standin.start(host="127.0.0.1", port=standin_port)
    settings = settings.model_copy(update={"openai_base_url": base_url})
    console.print(f"[bold]OpenAI stand-in[/] at {base_url}; backend [bold]{settings.backend}[/]")
    stop = asyncio.Event()
    service = WorkerService(settings)
    worker = asyncio.create_task(service.run(stop))
    try:
        await _wait_ready(service, worker)
        return await _converse(console, settings, timeout_s)
    finally:
        stop.set()
        await worker
        await standin.stop()


async def _wait_ready(service: WorkerService, worker: asyncio.Task[None]) -> None:
    ready = asyncio.create_task(service.ready.wait())
    await asyncio.wait({ready, worker}, return_when=asyncio.FIRST_COMPLETED)
    if worker.done():
        ready.cancel()
        worker.result()  # raises why the worker could not start


async def _converse(console: Console, settings: Settings, timeout_s: float) -> bool:
    run = uuid.uuid4().hex[:6]
    t = settings.topology
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        reply_queue = await channel.get_queue(t.reply_queue, ensure=False)
        waiting: dict[str, str] = {}
        for label, text in SCRIPT:
            event: dict[str, Any] = {
                "event_id": f"demo-{run}-{len(waiting) + 1}",
                "conversation_id": f"demo-{run}-{label}",
                "text": text,
            }
            await publish_user_message(channel, t, event)
            waiting[event["event_id"]] = label
            console.print(f"[cyan]customer {label}[/] > {text}")
            await asyncio.sleep(0.2)
        return await _print_replies(console, reply_queue, waiting, run, timeout_s)


async def _print_replies(
    console: Console, queue: Any, waiting: dict[str, str], run: str, timeout_s: float
) -> bool:
    try:
        async with asyncio.timeout(timeout_s), aclosing(replies(queue, timeout_s)) as stream:
            async for reply in stream:
                if not reply["conversation_id"].startswith(f"demo-{run}-"):
                    continue  # left over from an earlier demo
                label = reply["conversation_id"].rsplit("-", 1)[1]
                answered = ", ".join(reply["in_reply_to"])
                console.print(
                    f"[green]assistant {label}[/] ({reply['status']}, answers {answered}) > "
                    f"{reply['text']}"
                )
                for event_id in reply["in_reply_to"]:
                    waiting.pop(event_id, None)
                if not waiting:
                    console.print("[bold green]every message was answered[/]")
                    return True
    except TimeoutError:
        pass
    console.print(f"[bold red]no reply within {timeout_s:g} s for:[/] {', '.join(sorted(waiting))}")
    return False
