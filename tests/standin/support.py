"""Helpers for the stand-in tests: a raw HTTP client and in-process waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
from openai.types import FilePurpose

from standin import StandIn, StandInConfig

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


async def upload(
    client: openai.AsyncOpenAI,
    filename: str,
    content: bytes = b"data",
    purpose: FilePurpose = "user_data",
) -> str:
    """Upload a file through the SDK and return its id."""
    uploaded = await client.files.create(file=(filename, content), purpose=purpose)
    return uploaded.id


async def wait_until(standin: StandIn, object_id: str, statuses: frozenset[str] = TERMINAL) -> str:
    """Wait for a run or response on the stand-in's own state, so tests send no polls."""
    await wait_for(lambda: _status(standin, object_id) in statuses, f"{object_id} in {statuses}")
    return _status(standin, object_id)


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.005)


def _status(standin: StandIn, object_id: str) -> str:
    run = standin.state.runs.get(object_id)
    if run is not None:
        return run.status
    return standin.state.responses[object_id].status
