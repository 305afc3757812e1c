"""The control API: journal, run records, config, reset; and serve()."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket

import aiohttp
import openai
import pytest

from standin import StandIn, serve
from tests.standin.support import FAST, RawHttp, wait_until


async def test_journal_records_every_v1_request(
    client: openai.AsyncOpenAI, http: RawHttp, standin: StandIn
) -> None:
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "x"}])
    run = await client.beta.threads.runs.create(thread.id, assistant_id="asst_x")
    await client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    await http.get("/_standin/health")

    journal = (await http.get("/_standin/journal")).body["entries"]
    assert journal == standin.journal
    assert [(e["method"], e["path"], e["status"]) for e in journal] == [
        ("POST", "/v1/threads", 200),
        ("POST", f"/v1/threads/{thread.id}/runs", 200),
        ("GET", f"/v1/threads/{thread.id}/runs/{run.id}", 200),
    ]
    assert [e["seq"] for e in journal] == [1, 2, 3]
    assert all(e["thread_id"] == thread.id and e["retry_count"] == 0 for e in journal)
    assert [e["run_id"] for e in journal] == [None, run.id, run.id]
    assert journal[0]["at"] <= journal[1]["at"] <= journal[2]["at"]
    assert set(journal[0]) == {
        "seq",
        "at",
        "method",
        "path",
        "status",
        "fault",
        "retry_count",
        "thread_id",
        "run_id",
        "response_id",
        "conversation_id",
    }

    assert (await http.delete("/_standin/journal")).status == 200
    assert standin.journal == []
    await client.beta.threads.retrieve(thread.id)
    assert [e["seq"] for e in standin.journal] == [4]


async def test_run_records_allow_overlap_analysis(
    client: openai.AsyncOpenAI, http: RawHttp, standin: StandIn
) -> None:
    thread = await client.beta.threads.create()
    for text in ("a", "b", "c"):
        run = await client.beta.threads.runs.create(
            thread.id,
            assistant_id="asst_x",
            additional_messages=[{"role": "user", "content": text}],
            metadata={"n": text},
        )
        await wait_until(standin, run.id)

    records = (await http.get("/_standin/runs")).body["runs"]
    assert [(r["kind"], r["thread_id"], r["status"]) for r in records] == [
        ("run", thread.id, "completed")
    ] * 3
    assert [(r["batch"], r["metadata"]) for r in records] == [
        (["a"], {"n": "a"}),
        (["b"], {"n": "b"}),
        (["c"], {"n": "c"}),
    ]
    for record in records:
        assert record["created_at"] < record["started_at"] < record["ended_at"]
        assert isinstance(record["ended_at"], float)
    for earlier, later in itertools.pairwise(records):
        assert earlier["ended_at"] <= later["created_at"]


async def test_config_can_be_read_and_updated(http: RawHttp, standin: StandIn) -> None:
    assert (await http.get("/_standin/config")).body["run_duration_ms"] == 50
    updated = await http.post("/_standin/config", {"run_duration_ms": 75, "poll_after_ms": None})
    assert updated.status == 200
    assert (standin.config.run_duration_ms, standin.config.poll_after_ms) == (75, None)
    for bad in ({"run_duration_ms": "fast"}, {"nope": 1}, {"queue_ms": -1}, {"seed": True}):
        reply = await http.post("/_standin/config", bad)
        assert reply.status == 400, bad
    assert standin.config.run_duration_ms == 75


async def test_reset_forgets_state_faults_and_journal(
    client: openai.AsyncOpenAI, http: RawHttp, standin: StandIn
) -> None:
    standin.update_config({"run_duration_ms": 10_000})
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "x"}])
    await client.beta.threads.runs.create(thread.id, assistant_id="asst_x")
    standin.add_faults([{"kind": "status", "status": 500, "method": "DELETE"}])

    assert (await http.post("/_standin/reset")).status == 200
    assert (standin.state.threads, standin.state.runs, standin.journal) == ({}, {}, [])
    assert standin.fault_rules == []
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.delete(thread.id)
    assert [e["status"] for e in standin.journal] == [404]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_serve_runs_until_cancelled() -> None:
    port = _free_port()
    task = asyncio.create_task(serve(FAST, "127.0.0.1", port))
    url = f"http://127.0.0.1:{port}/_standin/health"
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(url) as response:
                    assert response.status == 200
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.01)
        else:
            raise AssertionError("serve() never started listening")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(url):
                pass


async def test_start_twice_is_refused() -> None:
    standin = StandIn(FAST)
    await standin.start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            await standin.start()
    finally:
        await standin.stop()


async def test_inspection_accessors_hand_out_copies_and_refuse_unknown_ids(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "x"}])
    conversation = await client.conversations.create(items=[{"role": "user", "content": "y"}])
    response = await client.responses.create(model="gpt-test", input="z", metadata={"k": "v"})

    standin.thread_messages(thread.id)[0]["metadata"]["poked"] = "1"
    standin.conversation_items(conversation.id)[0]["content"].clear()
    standin.response_input_items(response.id).clear()
    assert standin.thread_messages(thread.id)[0]["metadata"] == {}
    assert standin.conversation_items(conversation.id)[0]["content"] == [
        {"type": "input_text", "text": "y"}
    ]
    assert len(standin.response_input_items(response.id)) == 1
    assert (standin.response(response.id)["metadata"], standin.files()) == ({"k": "v"}, [])

    await client.beta.threads.delete(thread.id)
    calls = (
        lambda: standin.thread_messages(thread.id),
        lambda: standin.conversation_items("conv_missing"),
        lambda: standin.response("resp_missing"),
        lambda: standin.response_input_items("resp_missing"),
        lambda: standin.file_content("file_missing"),
    )
    for call in calls:
        with pytest.raises(KeyError):
            call()
