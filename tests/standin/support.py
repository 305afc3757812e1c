"""Helpers for the stand-in tests: a raw HTTP client and in-process waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from worker.standin import StandIn, StandInConfig

FAST = StandInConfig(queue_ms=10, run_duration_ms=50, cancel_ms=10)
TERMINAL = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any


class RawHttp:
    """Plain HTTP next to the SDK: raw bodies for schema checks, and the control API."""

    def __init__(self, session: aiohttp.ClientSession, root: str) -> None:
        self._session = session
        self._root = root

    async def request(self, method: str, path: str, json: Any = None) -> Reply:
        async with self._session.request(method, self._root + path, json=json) as response:
            body = await response.json() if response.content_length != 0 else None
            return Reply(response.status, response.headers, body)

    async def get(self, path: str) -> Reply:
        return await self.request("GET", path)

    async def post(self, path: str, json: Any = None) -> Reply:
        return await self.request("POST", path, json=json if json is not None else {})

    async def delete(self, path: str) -> Reply:
        return await self.request("DELETE", path)


async def wait_until(standin: StandIn, run_id: str, statuses: frozenset[str] = TERMINAL) -> str:
    """Wait on the stand-in's own state, so tests do not send polls of their own."""
    deadline = time.monotonic() + 5
    while True:
        status = standin.state.runs[run_id].status
        if status in statuses:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"{run_id} stuck in {status}, wanted one of {sorted(statuses)}")
        await asyncio.sleep(0.005)
