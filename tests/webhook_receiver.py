"""The webhook receiver as tests run it: the real service in-process, on a free port, with the
stand-in posting its deliveries there."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from pydantic import SecretStr

from standin import StandIn
from worker.settings import Settings
from worker.webhooks.receiver import WEBHOOK_PATH, WebhookService
from worker.webhooks.verify import verifier_of

# Every way a delivery can go wrong, at once: the sweep and the table must make up for each.
WEBHOOK_FAULTS = [
    {"kind": "webhook_drop", "rate": 0.15},
    {"kind": "webhook_duplicate", "rate": 0.15},
    {"kind": "webhook_delay", "rate": 0.15, "delay_s": 0.8},
    {"kind": "webhook_reorder", "rate": 0.1},
    {"kind": "webhook_missign", "rate": 0.1},
]


def with_webhooks(settings: Settings, standin: StandIn, sweep_s: float) -> Settings:
    """Settings for workers and receiver alike: webhooks on, the stand-in's signing secret."""
    return settings.model_copy(
        update={
            "webhooks": True,
            "webhook_sweep_s": sweep_s,
            "openai_webhook_secret": SecretStr(standin.webhook_secret),
            "webhook_host": "127.0.0.1",
            "webhook_port": 0,
        }
    )


@contextlib.asynccontextmanager
async def running_receiver(settings: Settings, standin: StandIn) -> AsyncIterator[WebhookService]:
    service = WebhookService(settings, verifier_of(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), timeout=10)
        standin.update_config(
            {
                "webhook_url": f"http://127.0.0.1:{service.port}{WEBHOOK_PATH}",
                "webhook_retry_base_ms": 20,
                "webhook_retry_cap_ms": 500,
            }
        )
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
