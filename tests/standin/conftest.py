"""Fixtures: a stand-in on a real socket, the official SDK pointed at it, raw HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from standin import StandIn
from tests.standin.support import FAST, RawHttp


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    server = StandIn(FAST)
    await server.start(host="127.0.0.1", port=0)
    yield server
    await server.stop()


@pytest.fixture
async def client(standin: StandIn) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=standin.base_url, api_key="sk-test", max_retries=0)
    yield sdk
    await sdk.close()


@pytest.fixture
async def http(standin: StandIn) -> AsyncIterator[RawHttp]:
    async with aiohttp.ClientSession() as session:
        yield RawHttp(session, standin.base_url.removesuffix("/v1"))
