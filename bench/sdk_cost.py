"""CPU per HTTP request: the OpenAI SDK against plain HTTP clients, on the same stand-in call.

    python -m bench.sdk_cost [--requests 2000] [--concurrency 16]

Retrieves one run over and over (the worker's poll) with: the SDK's parsed `runs.retrieve`,
the SDK's `with_raw_response` (what the worker calls, then `.parse()`), the same over the SDK's
`DefaultAioHttpClient`, a bare `httpx2` client (the SDK's own transport) and bare `aiohttp`,
and prints this process's CPU milliseconds per request. The stand-in runs in another process,
so its CPU is not counted. It bounds what a poll can cost.

It also times, without any request, the SDK's transform of typed request parameters (the walk
of a `responses.create` body against the SDK's TypedDicts), which is why the Responses backend
passes `input` and `tools` through `extra_body`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx2
import openai

from bench.services import StandInProcess

warnings.filterwarnings("ignore", category=DeprecationWarning)  # the Assistants surface

Call = Callable[[], Awaitable[object]]


async def cpu_ms_per_call(call: Call, requests: int, concurrency: int) -> float:
    """This process's CPU time per call, with `concurrency` calls in flight."""
    await call()  # warm: connections, lazy imports, caches
    left = requests

    async def loop() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    before = os.times()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    after = os.times()
    used = (after.user - before.user) + (after.system - before.system)
    return 1000 * used / requests


async def measure(base_url: str, requests: int, concurrency: int) -> dict[str, float]:
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    # The SDK's own option to put aiohttp under it (httpx2's API, aiohttp's transport).
    sdk_aiohttp = openai.AsyncOpenAI(
        base_url=base_url,
        api_key="sk-bench",
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )
    thread = await sdk.beta.threads.create()
    run = await sdk.beta.threads.runs.create(thread.id, assistant_id="asst_bench")
    url = f"{base_url}/threads/{thread.id}/runs/{run.id}"
    headers = {"Authorization": "Bearer sk-bench", "OpenAI-Beta": "assistants=v2"}
    runs = sdk.beta.threads.runs
    runs_aiohttp = sdk_aiohttp.beta.threads.runs
    raw = httpx2.AsyncClient(headers=headers)
    session = aiohttp.ClientSession(headers=headers)

    async def via_aiohttp() -> object:
        async with session.get(url) as response:
            return json.loads(await response.read())["status"]

    async def via_sdk_aiohttp() -> object:
        return (await runs_aiohttp.with_raw_response.retrieve(run.id, thread_id=thread.id)).parse()

    async def via_httpx() -> object:
        return json.loads((await raw.get(url)).content)["status"]

    async def via_sdk_raw() -> object:
        return (await runs.with_raw_response.retrieve(run.id, thread_id=thread.id)).parse()

    calls: dict[str, Call] = {
        "sdk runs.retrieve (parsed)": lambda: runs.retrieve(run.id, thread_id=thread.id),
        "sdk with_raw_response + parse (the worker's poll)": via_sdk_raw,
        "sdk with_raw_response + parse, http_client=DefaultAioHttpClient()": via_sdk_aiohttp,
        "httpx2 GET + json (the SDK's transport, no SDK)": via_httpx,
        "aiohttp GET + json": via_aiohttp,
    }
    try:
        return {name: await cpu_ms_per_call(c, requests, concurrency) for name, c in calls.items()}
    finally:
        await session.close()
        await raw.aclose()
        await sdk.close()
        await sdk_aiohttp.close()


async def transform_ms(repeat: int = 2000) -> dict[str, float]:
    """CPU of the SDK's parameter transform for the worker's `responses.create` body."""
    from openai._utils import async_maybe_transform
    from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming

    from worker.profiles.declarations import responses_tools
    from worker.profiles.load import shorthand_profiles

    body: dict[str, object] = {
        "background": True,
        "store": True,
        "conversation": "conv_bench",
        "model": "gpt-4o-mini",
        "instructions": "You are a helpful helpdesk assistant.",
        "metadata": {"aw_batch_id": "b", "aw_attempt": "1"},
    }
    wire = {
        "input": [{"type": "message", "role": "user", "content": "Where is my order?"}],
        "tools": responses_tools(shorthand_profiles("gpt-4o-mini", "").profiles["default"]),
    }
    result = {}
    for name, params in (
        ("sdk transform, responses.create typed (input, tools)", {**body, **wire}),
        ("sdk transform, input and tools in extra_body (the worker)", body),
    ):
        before = time.process_time()
        for _ in range(repeat):
            await async_maybe_transform(params, ResponseCreateParamsNonStreaming)
        result[name] = 1000 * (time.process_time() - before) / repeat
    return result


async def main(args: argparse.Namespace) -> None:
    standin = StandInProcess(Path(tempfile.mkdtemp(prefix="aw-sdk-cost-")) / "standin.log")
    await standin.start()
    try:
        # A run that never ends, so every retrieve answers the same-sized body.
        await standin.prepare(run_ms=3_600_000, queue_ms=0, faults=[])
        results = await measure(standin.base_url, args.requests, args.concurrency)
    finally:
        await standin.stop()
    print(f"CPU per request, {args.requests} requests, {args.concurrency} in flight:")
    for name, ms in results.items():
        print(f"  {ms:6.3f} ms  {name}")
    print("CPU per call, no request:")
    for name, ms in (await transform_ms()).items():
        print(f"  {ms:6.3f} ms  {name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.sdk_cost", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    asyncio.run(main(parser.parse_args(sys.argv[1:])))
