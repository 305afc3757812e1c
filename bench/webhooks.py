"""The webhooks worker's receiver (`python -m worker webhooks`) as a process of its own, so its
CPU and memory are measured apart from the worker's; the stand-in posts each run's webhooks to it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.contenders import MeasuredProcess
from bench.services import WebhookTarget, clean_env
from standin.config import new_webhook_secret
from tests.ports import free_port
from worker.webhooks.receiver import WEBHOOK_PATH

_DELIVERIES = "assistant_worker_webhook_deliveries"


class ReceiverProcess(MeasuredProcess):
    """One run's receiver: a free port, a fresh signing secret, the run's database; ready once
    `/readyz` says so (it has its database)."""

    def __init__(self, log_path: Path) -> None:
        super().__init__("webhook receiver", [sys.executable, "-m", "worker", "webhooks"], log_path)
        self.port = free_port()
        self.target = WebhookTarget(
            f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}", new_webhook_secret()
        )

    def environment(self, database_url: str, settings: dict[str, str]) -> dict[str, str]:
        """The receiver's settings; `settings` are the worker contenders' extra ones (a lever
        such as AW_EVENT_LOOP applies to both processes of the contender)."""
        return {
            **clean_env(),
            "AW_DATABASE_URL": database_url,
            "AW_WEBHOOK_SECRET": self.target.secret,
            "AW_WEBHOOK_HOST": "127.0.0.1",
            "AW_WEBHOOK_PORT": str(self.port),
            "AW_LOG_LEVEL": "warning",
            "AW_LOG_FORMAT": "json",
            **settings,
        }

    async def wait_ready(self, timeout_s: float = 30) -> None:
        async with aiohttp.ClientSession() as http, asyncio.timeout(timeout_s):
            while not await self._ready(http):
                self.check_running()
                await asyncio.sleep(0.05)

    async def _ready(self, http: aiohttp.ClientSession) -> bool:
        try:
            async with http.get(f"http://127.0.0.1:{self.port}/readyz") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    async def outcomes(self) -> dict[str, int]:
        """The deliveries it has answered so far, by outcome (its `/metrics`)."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.port}/metrics") as response,
        ):
            text = await response.text()
        return {
            sample.labels["outcome"]: int(sample.value)
            for family in text_string_to_metric_families(text)
            if family.name == _DELIVERIES
            for sample in family.samples
            if sample.name == f"{_DELIVERIES}_total"
        }


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """The outcomes counted between two readings."""
    return {outcome: n - before.get(outcome, 0) for outcome, n in after.items()}
