"""`make demo`: the stand-in, a worker and a scripted helpdesk conversation, in one process."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import aclosing

import aio_pika
from aio_pika.abc import AbstractQueue
from pydantic import SecretStr
from rich.console import Console

from standin import StandIn, StandInConfig
from worker.ops.helpdesk import publish_user_message, replies
from worker.profiles.config import profiles_of
from worker.service import WorkerService
from worker.settings import Settings
from worker.store.migrate import migrate

# The stand-in takes any key; the worker refuses to run without one.
STANDIN_API_KEY = "sk-standin"
# (conversation, text, pause before sending). Customer A's first three messages arrive while
# the first run is still going, so the next run answers two of them at once (coalescing).
SCRIPT: tuple[tuple[str, str, float], ...] = (
    ("A", "Hi, my order #1042 has not arrived yet.", 0.0),
    ("A", "It was supposed to come on Monday.", 0.1),
    ("A", "The tracking page shows nothing.", 0.1),
    ("B", "How do I reset my password?", 0.1),
    ("B", "I never got the reset email.", 1.5),
    ("A", "Thanks for checking!", 0.5),
)


async def play(settings: Settings, *, standin_port: int, timeout_s: float) -> bool:
    console = Console()
    await migrate(settings.database_url.get_secret_value())
    standin = StandIn(StandInConfig(run_duration_ms=300))
    base_url = await standin.start(host="127.0.0.1", port=standin_port)
    # The stand-in, named outright: the settings' own defaults point at OpenAI itself.
    settings = settings.model_copy(
        update={"openai_base_url": base_url, "openai_api_key": SecretStr(STANDIN_API_KEY)}
    )
    console.print(f"[bold]OpenAI stand-in[/] at {base_url}; backend [bold]{settings.backend}[/]")
    stop = asyncio.Event()
    service = WorkerService(settings, profiles_of(settings))
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
    waiting = {f"demo-{run}-{n}" for n in range(1, len(SCRIPT) + 1)}
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        reply_queue = await channel.get_queue(t.reply_queue)
        # Replies are printed as they come, while the customers are still writing.
        printer = asyncio.create_task(_print_replies(console, reply_queue, waiting, run, timeout_s))
        for n, (label, text, pause_s) in enumerate(SCRIPT, start=1):
            await asyncio.sleep(pause_s)
            event = {
                "event_id": f"demo-{run}-{n}",
                "conversation_id": f"demo-{run}-{label}",
                "text": text,
            }
            await publish_user_message(channel, t, event)
            console.print(f"[cyan]customer {label}[/] > {text}")
        return await printer


async def _print_replies(
    console: Console, queue: AbstractQueue, waiting: set[str], run: str, timeout_s: float
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
                waiting.difference_update(reply["in_reply_to"])
                if not waiting:
                    console.print("[bold green]every message was answered[/]")
                    return True
    except TimeoutError:
        pass
    console.print(f"[bold red]no reply within {timeout_s:g} s for:[/] {', '.join(sorted(waiting))}")
    return False
