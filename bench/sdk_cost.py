"""CPU per HTTP request: the OpenAI SDK against plain HTTP clients, on the same stand-in call.

    python -m bench.sdk_cost [--requests 2000] [--concurrency 16] [--part all|assistants|responses]

Retrieves one run over and over (the worker's poll) with: the SDK's parsed `runs.retrieve`,
the SDK's `with_raw_response` (what the worker calls, then `.parse()`), the same over the SDK's
`DefaultAioHttpClient`, a bare `httpx2` client (the SDK's own transport) and bare `aiohttp`,
and prints this process's CPU milliseconds per request. The stand-in runs in another process,
so its CPU is not counted. It bounds what a poll can cost.

On the Responses API, over the worker's own client (`make_client`: the aiohttp transport), it
compares what a poll and a create cost read as the SDK's `Response` model (`responses.retrieve`,
`responses.create`) with what the worker's backend pays for the same call and its RunSnapshot
(`retrieve_run`, `start_run`), and with the floor of the SDK's request alone (`with_raw_response`,
body unread). A poll is timed on a response still in progress (most polls) and on a settled one
whose output carries hosted tool calls and citations (the last poll of a turn).

It also times, without any request: the SDK's transform of typed request parameters (the walk
of a `responses.create` body against the SDK's TypedDicts), which is why the Responses backend
passes `input` and `tools` through `extra_body`; and reading the same response bodies into the
SDK's model against the backend's reading of them into a RunSnapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx2
import openai
from openai._models import construct_type
from openai.types.responses import Response

from bench.services import StandInProcess
from worker.backends.base import RunRef, RunSnapshot, Turn
from worker.backends.response_wire import read_snapshot
from worker.backends.responses import ResponsesBackend
from worker.events import UserMessage
from worker.profiles.declarations import responses_tools
from worker.profiles.load import shorthand_profiles

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

    # process_time: user and system CPU of every thread, to the nanosecond (os.times counts
    # in clock ticks, 10 ms).
    before = time.process_time()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return 1000 * (time.process_time() - before) / requests


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


# Hosted tools the stand-in runs without any setup, so a settled response's output carries
# their calls, a URL citation and a container file citation, as a hosted-tools turn's does.
_HOSTED_TOOLS: list[dict[str, object]] = [
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {"type": "web_search"},
    {
        "type": "mcp",
        "server_label": "wiki",
        "server_url": "https://mcp.example.com/mcp",
        "require_approval": "never",
    },
]
_HOSTED_TEXT = (
    "chart it [[code_file:r.csv]] [[web_search]] [[mcp:wiki:read_page {}]] [[delay_ms:0]]"
)


async def measure_responses(
    base_url: str, requests: int, concurrency: int
) -> tuple[dict[str, float], dict[str, bytes]]:
    """Polls and creates on the Responses API: the SDK's model, the backend, the SDK's floor.

    Also hands back the bodies polled (in progress, settled) for `reading_ms`.
    """
    # The worker's client (worker.service.make_client): the SDK over its aiohttp transport.
    sdk = openai.AsyncOpenAI(
        base_url=base_url,
        api_key="sk-bench",
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )
    backend = ResponsesBackend(sdk)
    responses = sdk.responses
    try:
        pending = await _response(sdk, "where is my order?", [])
        settled = await _response(sdk, _HOSTED_TEXT, _HOSTED_TOOLS)
        await _settles(sdk, settled.run_id)
        bodies = {}
        calls: dict[str, Call] = {}
        for label, run in (("in progress", pending), ("settled, hosted calls", settled)):
            bodies[label] = (await responses.with_raw_response.retrieve(run.run_id)).content
            calls |= _retrieves(sdk, backend, run, label)
        results = {n: await cpu_ms_per_call(c, requests, concurrency) for n, c in calls.items()}
        results |= await _creates(sdk, backend, requests, concurrency)
        return results, bodies
    finally:
        await sdk.close()


async def _response(sdk: openai.AsyncOpenAI, text: str, tools: list[dict[str, object]]) -> RunRef:
    conversation = await sdk.conversations.create()
    response = await sdk.responses.create(
        background=True,
        store=True,
        conversation=conversation.id,
        model="gpt-4o-mini",
        extra_body={
            "input": [{"type": "message", "role": "user", "content": text}],
            "tools": tools,
        },
    )
    return RunRef(conversation.id, response.id)


async def _settles(sdk: openai.AsyncOpenAI, response_id: str) -> None:
    for _ in range(500):
        if (await sdk.responses.retrieve(response_id)).status == "completed":
            return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{response_id} did not complete")


def _retrieves(
    sdk: openai.AsyncOpenAI, backend: ResponsesBackend, run: RunRef, label: str
) -> dict[str, Call]:
    responses = sdk.responses

    async def floor() -> object:
        return await responses.with_raw_response.retrieve(run.run_id)

    return {
        f"responses.retrieve, {label}: sdk parsed (Response model)": lambda: responses.retrieve(
            run.run_id
        ),
        f"responses.retrieve, {label}: backend.retrieve_run (the worker's poll)": lambda: (
            backend.retrieve_run(run)
        ),
        f"responses.retrieve, {label}: sdk with_raw_response, body not parsed (floor)": floor,
    }


async def _creates(
    sdk: openai.AsyncOpenAI, backend: ResponsesBackend, requests: int, concurrency: int
) -> dict[str, float]:
    """Creates as the worker makes them, each in a conversation of its own (one response in
    progress holds its conversation); the conversations are made before the clock starts."""
    profile = shorthand_profiles("gpt-4o-mini", "You are a helpful helpdesk assistant.")
    turn = Turn(
        batch_id=uuid.uuid4(),
        attempt=1,
        conversation_id="c-bench",
        messages=(UserMessage("e-1", "c-bench", "Where is my order?"),),
        assistant_id="asst_bench",
        add_messages=True,
        profile=profile.profiles[profile.default],
    )
    body = {
        "background": True,
        "store": True,
        "model": turn.profile.model,
        "instructions": turn.profile.instructions,
        "metadata": {"aw_batch_id": str(turn.batch_id), "aw_attempt": "1"},
        "extra_body": {
            "input": [{"type": "message", "role": "user", "content": "Where is my order?"}],
            "tools": responses_tools(turn.profile),
        },
    }

    async def parsed(conversation: str) -> object:
        return await sdk.responses.create(conversation=conversation, **body)  # type: ignore[call-overload]

    async def floor(conversation: str) -> object:
        return await sdk.responses.with_raw_response.create(conversation=conversation, **body)  # type: ignore[call-overload]

    async def worker(conversation: str) -> RunSnapshot:
        return await backend.start_run(conversation, turn)

    results = {}
    for name, create in (
        ("responses.create: sdk parsed (Response model)", parsed),
        ("responses.create: backend.start_run (the worker's create)", worker),
        ("responses.create: sdk with_raw_response, body not parsed (floor)", floor),
    ):
        conversations = await _conversations(sdk, requests + 1)
        results[name] = await cpu_ms_per_call(
            _in_a_free_conversation(create, conversations), requests, concurrency
        )
    return results


def _in_a_free_conversation(
    create: Callable[[str], Awaitable[object]], conversations: list[str]
) -> Call:
    return lambda: create(conversations.pop())


async def _conversations(sdk: openai.AsyncOpenAI, count: int) -> list[str]:
    made: list[str] = []
    while len(made) < count:
        batch = min(32, count - len(made))
        made += [
            c.id for c in await asyncio.gather(*(sdk.conversations.create() for _ in range(batch)))
        ]
    return made


def reading_ms(bodies: dict[str, bytes], repeat: int = 2000) -> dict[str, float]:
    """CPU of reading one response body: into the SDK's model (what `.parse()` does), into the
    backend's RunSnapshot (what `retrieve_run` does once the body is in: response_wire),
    and the JSON decoding alone."""
    readings: dict[str, Callable[[bytes], object]] = {
        "sdk model (json + Response model, as .parse())": lambda b: construct_type(
            type_=Response, value=json.loads(b)
        ),
        "the backend's reading into a RunSnapshot": read_snapshot,
        "decoding alone: json.loads": json.loads,
    }
    result = {}
    for label, body in bodies.items():
        for name, read in readings.items():
            before = time.process_time()
            for _ in range(repeat):
                read(body)
            result[f"read a body, {label} ({len(body)} B): {name}"] = (
                1000 * (time.process_time() - before) / repeat
            )
    return result


async def transform_ms(repeat: int = 2000) -> dict[str, float]:
    """CPU of the SDK's parameter transform for the worker's `responses.create` body."""
    from openai._utils import async_maybe_transform
    from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming

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
    results: dict[str, float] = {}
    try:
        # A run that never ends, so every retrieve answers the same-sized body; a response
        # that should settle says so with its own delay marker.
        await standin.prepare(run_ms=3_600_000, queue_ms=0, faults=[])
        if args.part in ("all", "assistants"):
            results |= await measure(standin.base_url, args.requests, args.concurrency)
        if args.part in ("all", "responses"):
            measured, bodies = await measure_responses(
                standin.base_url, args.requests, args.concurrency
            )
            results |= measured
    finally:
        await standin.stop()
    print(f"CPU per request, {args.requests} requests, {args.concurrency} in flight:")
    for name, ms in results.items():
        print(f"  {ms:6.3f} ms  {name}")
    print("CPU per call, no request:")
    for name, ms in (await transform_ms()).items():
        print(f"  {ms:6.3f} ms  {name}")
    if args.part in ("all", "responses"):
        for name, ms in reading_ms(bodies).items():
            print(f"  {ms:6.3f} ms  {name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.sdk_cost", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--part", choices=("all", "assistants", "responses"), default="all")
    asyncio.run(main(parser.parse_args(sys.argv[1:])))
