"""The core relay end to end: real RabbitMQ, real Postgres, the stand-in over HTTP."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import openai
import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.conftest import RunningWorker, start_worker
from tests.support import (
    drain,
    publish,
    publish_raw,
    replies_for,
    wait_for_dead_letters,
)
from worker.events import validator
from worker.settings import BackendName, Settings, Topology

THREAD_CREATE_PATH = {"assistants": "/v1/threads", "responses": "/v1/conversations"}


@pytest.fixture(params=["assistants", "responses"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every behaviour here must hold for both backends."""
    return str(request.param)


async def test_a_user_message_gets_one_valid_reply(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology
) -> None:
    event = await publish(channel, topology, conversation_id="c-happy", text="Where is my parcel?")
    [reply] = await replies_for(channel, topology, {event["event_id"]})

    assert list(validator("assistant_reply.v1").iter_errors(reply)) == []
    assert reply["status"] == "completed"
    assert reply["in_reply_to"] == [event["event_id"]]
    assert reply["conversation_id"] == "c-happy"
    assert reply["text"] == "Echo: Where is my parcel?"
    assert reply["usage"]["total_tokens"] > 0
    assert reply["error"] is None
    assert await drain(channel, topology.reply_queue) == []


async def test_first_contact_creates_one_thread_and_later_messages_reuse_it(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    backend: str,
) -> None:
    first = await publish(channel, topology, conversation_id="c-reuse", text="one")
    [r1] = await replies_for(channel, topology, {first["event_id"]})
    second = await publish(channel, topology, conversation_id="c-reuse", text="two")
    [r2] = await replies_for(channel, topology, {second["event_id"]})

    assert r1["thread_id"] == r2["thread_id"]
    assert r2["text"] == "Echo: two"
    stored = await db.fetchval(
        "SELECT thread_id FROM conversations WHERE conversation_id = 'c-reuse'"
    )
    assert stored == r1["thread_id"]
    thread_creates = [
        e
        for e in standin.journal
        if e["method"] == "POST" and e["path"] == THREAD_CREATE_PATH[backend]
    ]
    assert len(thread_creates) == 1


async def test_two_conversations_are_answered_concurrently(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology, standin: StandIn
) -> None:
    a = await publish(channel, topology, conversation_id="c-a", text="slow a [[delay_ms:1500]]")
    b = await publish(channel, topology, conversation_id="c-b", text="slow b [[delay_ms:1500]]")
    replies = await replies_for(channel, topology, {a["event_id"], b["event_id"]})

    assert {r["conversation_id"] for r in replies} == {"c-a", "c-b"}
    runs = {r["id"]: r for r in standin.run_records()}
    run_a, run_b = (runs[r["run_id"]] for r in sorted(replies, key=lambda r: r["conversation_id"]))
    # Both runs were in flight at the same moment: neither waited for the other.
    assert run_a["created_at"] < run_b["ended_at"]
    assert run_b["created_at"] < run_a["ended_at"]


async def test_invalid_event_is_dead_lettered_and_the_valid_one_beside_it_answered(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology
) -> None:
    bad_body = json.dumps({"event_id": "evt-bad", "text": "no conversation"}).encode()
    await publish_raw(channel, topology, bad_body)
    await publish_raw(channel, topology, b"\x00 not json at all")
    good = await publish(channel, topology, conversation_id="c-good", text="fine")

    [reply] = await replies_for(channel, topology, {good["event_id"]})
    assert reply["status"] == "completed"
    dead = await wait_for_dead_letters(channel, topology, 2)
    by_reason = {d.headers["x-aw-reason"]: d for d in dead}
    assert set(by_reason) == {"schema_invalid", "malformed_json"}
    assert by_reason["schema_invalid"].body == bad_body
    assert (
        "'conversation_id' is a required property"
        in by_reason["schema_invalid"].headers["x-aw-error"]
    )
    assert by_reason["malformed_json"].body == b"\x00 not json at all"
    assert by_reason["schema_invalid"].headers["x-aw-original-routing-key"] == "user_message.v1"


# (marker, status, error code) per backend: Responses have no "expired", and their incomplete
# reason is named after output tokens.
OUTCOMES = {
    "assistants": [
        ("[[outcome:failed:invalid_prompt]]", "failed", "invalid_prompt"),
        ("[[outcome:expired]]", "expired", "expired"),
        ("[[outcome:incomplete]]", "incomplete", "max_completion_tokens"),
    ],
    "responses": [
        ("[[outcome:failed:invalid_prompt]]", "failed", "invalid_prompt"),
        ("[[outcome:incomplete]]", "incomplete", "max_output_tokens"),
    ],
}


async def test_a_run_that_does_not_complete_yields_a_reply_with_its_status(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology, backend: str
) -> None:
    for n, (marker, status, code) in enumerate(OUTCOMES[backend]):
        event = await publish(channel, topology, conversation_id=f"c-bad-{n}", text=f"hi {marker}")
        [reply] = await replies_for(channel, topology, {event["event_id"]})
        assert (reply["status"], reply["error"]["code"]) == (status, code), marker
        assert reply["error"]["message"]


async def test_a_run_past_its_deadline_is_cancelled_and_reported(
    settings: Settings, channel: AbstractChannel, topology: Topology, standin: StandIn
) -> None:
    running = await start_worker(settings.model_copy(update={"run_deadline_s": 0.5}))
    try:
        event = await publish(channel, topology, conversation_id="c-hang", text="[[outcome:hang]]")
        [reply] = await replies_for(channel, topology, {event["event_id"]})
    finally:
        await running.shutdown()
    assert reply["status"] == "cancelled"
    assert reply["error"]["code"] == "deadline_exceeded"
    [run] = runs_in(standin, reply["thread_id"])
    assert run["status"] in ("cancelling", "cancelled")


async def test_a_transiently_failed_run_is_retried_with_a_new_run(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology, standin: StandIn
) -> None:
    event = await publish(
        channel, topology, conversation_id="c-flaky", text="x [[outcome:failed_once]]"
    )
    [reply] = await replies_for(channel, topology, {event["event_id"]})
    assert reply["status"] == "completed"
    runs = runs_in(standin, reply["thread_id"])
    assert [r["status"] for r in runs] == ["failed", "completed"]
    thread = standin_messages(standin, reply["thread_id"])
    assert [m for m in thread if m == ("user", "x [[outcome:failed_once]]")] == [
        ("user", "x [[outcome:failed_once]]")
    ]


async def test_transient_http_errors_are_retried_and_the_reply_arrives_once(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    backend: str,
) -> None:
    create, poll = (
        (r"/runs$", r"/runs/run_")
        if backend == "assistants"
        else (
            r"/responses$",
            r"/responses/resp_",
        )
    )
    standin.add_faults(
        [
            {
                "kind": "status",
                "status": 429,
                "retry_after_s": 0.2,
                "method": "POST",
                "path": create,
                "times": 2,
            },
            {"kind": "status", "status": 500, "method": "GET", "path": poll, "times": 2},
        ]
    )
    event = await publish(channel, topology, conversation_id="c-faults", text="hello")
    [reply] = await replies_for(channel, topology, {event["event_id"]})
    assert reply["status"] == "completed"
    assert await drain(channel, topology.reply_queue, quiet_s=1.0) == []
    faults = [e["fault"] for e in standin.journal if e["fault"]]
    assert len(faults) == 4
    assert len(runs_in(standin, reply["thread_id"])) == 1


async def test_a_duplicate_delivery_is_answered_once(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology, standin: StandIn
) -> None:
    event = await publish(channel, topology, conversation_id="c-dup", text="only once")
    await publish(channel, topology, **event)
    [reply] = await replies_for(channel, topology, {event["event_id"]})
    assert await drain(channel, topology.reply_queue, quiet_s=1.0) == []
    assert user_texts(standin, reply["thread_id"]) == ["only once"]


async def test_a_burst_is_coalesced_into_few_runs_answering_in_order(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology, standin: StandIn
) -> None:
    events = []
    for n in range(5):
        events.append(
            await publish(
                channel, topology, conversation_id="c-burst", text=f"m{n} [[delay_ms:400]]"
            )
        )
        await asyncio.sleep(0.05)
    ids = [e["event_id"] for e in events]
    replies = await replies_for(channel, topology, set(ids))

    answered = [event_id for r in replies for event_id in r["in_reply_to"]]
    assert answered == ids  # every event once, in arrival order
    assert len(replies) < len(events)


async def test_tool_calls_are_served_and_unknown_tools_get_an_error_output(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology
) -> None:
    known = await publish(
        channel,
        topology,
        conversation_id="c-tool",
        text="time? [[outcome:requires_action:current_time]]",
    )
    unknown = await publish(
        channel,
        topology,
        conversation_id="c-tool2",
        text="x [[outcome:requires_action:launch_rocket]]",
    )
    replies = await replies_for(channel, topology, {known["event_id"], unknown["event_id"]})
    by_conversation = {r["conversation_id"]: r for r in replies}
    assert '"utc"' in by_conversation["c-tool"]["text"]
    assert "unknown tool 'launch_rocket'" in by_conversation["c-tool2"]["text"]
    assert {r["status"] for r in replies} == {"completed"}


async def test_an_event_the_api_rejects_is_dead_lettered_with_the_reason(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology, standin: StandIn
) -> None:
    standin.add_faults(
        [
            {
                "kind": "status",
                "status": 400,
                "method": "POST",
                "path": r"/(runs|responses)$",
                "times": 1,
            }
        ]
    )
    event = await publish(channel, topology, conversation_id="c-reject", text="hi")
    [dead] = await wait_for_dead_letters(channel, topology, 1)
    assert dead.headers["x-aw-reason"] == "openai_rejected"
    assert "HTTP 400" in dead.headers["x-aw-error"]
    assert dead.headers["x-aw-event-id"] == event["event_id"]
    assert dead.headers["x-aw-conversation-id"] == "c-reject"
    assert dead.json() == event
    later = await publish(channel, topology, conversation_id="c-reject", text="still there?")
    [reply] = await replies_for(channel, topology, {later["event_id"]})
    assert reply["status"] == "completed"
    assert reply["text"] == "Echo: still there?"


async def test_an_unknown_assistant_is_a_permanent_error(
    settings: Settings, channel: AbstractChannel, topology: Topology
) -> None:
    running = await start_worker(settings.model_copy(update={"backend": BackendName.ASSISTANTS}))
    try:
        event = await publish(
            channel, topology, conversation_id="c-noasst", text="hi", assistant_id="nope"
        )
        [dead] = await wait_for_dead_letters(channel, topology, 1)
    finally:
        await running.shutdown()
    assert dead.headers["x-aw-reason"] == "openai_rejected"
    assert "404" in dead.headers["x-aw-error"]
    assert dead.json() == event


def runs_in(standin: StandIn, thread_id: str) -> list[dict[str, object]]:
    return [r for r in standin.run_records() if thread_id in (r["thread_id"], r["conversation_id"])]


# The POST that starts a run, by backend (for aiming faults at it).
RUN_CREATE = {"assistants": r"/threads/[^/]+/runs$", "responses": r"/responses$"}


def user_texts(standin: StandIn, thread_id: str) -> list[str]:
    return [text for role, text in standin_messages(standin, thread_id) if role == "user"]


def standin_messages(standin: StandIn, thread_id: str) -> list[tuple[str, str]]:
    """(role, text) of every message in a stand-in thread or conversation, oldest first."""
    if thread_id in standin.state.threads:
        return [(m.role, m.text()) for m in standin.state.threads[thread_id].messages]
    return [
        (item["role"], "".join(part.get("text", "") for part in item["content"]))
        for item in standin.state.conversations[thread_id].items
        if item["type"] == "message"
    ]


async def test_a_create_whose_answer_was_lost_is_adopted_not_repeated(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    backend: str,
) -> None:
    create = RUN_CREATE[backend]
    # The server does the work, then the connection drops before the answer is sent. The
    # retry waits longer than the run takes (110 ms), so it looks after the run has ended even
    # on a loaded machine; a run that ends while the retry is on its way is the next test's.
    standin.add_faults([{"kind": "drop_after", "method": "POST", "path": create, "times": 1}])
    worker = await start_worker(settings.model_copy(update={"api_backoff_base_s": 0.6}))
    try:
        event = await publish(channel, topology, conversation_id="c-lost", text="did it work?")
        [reply] = await replies_for(channel, topology, {event["event_id"]}, timeout_s=20)
    finally:
        await worker.shutdown()

    assert reply["status"] == "completed"
    assert reply["text"] == "Echo: did it work?"
    assert [e["fault"] for e in standin.journal if e["fault"]] == ["drop_after"]
    assert len(runs_in(standin, reply["thread_id"])) == 1
    assert user_texts(standin, reply["thread_id"]) == ["did it work?"]
    assert await drain(channel, topology.reply_queue, quiet_s=1.0) == []


async def test_a_lost_create_whose_run_ends_while_the_retry_is_on_its_way_runs_once(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    backend: str,
) -> None:
    # The retry looks before it creates again, but a background response shows nothing in
    # its conversation until it ends; here it ends while the retry's POST is held up.
    create = RUN_CREATE[backend]
    standin.add_faults(
        [
            {"kind": "drop_after", "method": "POST", "path": create, "times": 1},
            {"kind": "slow", "method": "POST", "path": create, "delay_s": 2.0, "times": 1},
            # ...and the answer to cancelling the second one is lost too.
            {"kind": "drop_after", "method": "POST", "path": r"/cancel$", "times": 1},
        ]
    )
    event = await publish(
        channel, topology, conversation_id="c-late", text="still there? [[delay_ms:800]]"
    )
    [reply] = await replies_for(channel, topology, {event["event_id"]}, timeout_s=20)

    assert reply["status"] == "completed"
    assert reply["text"] == "Echo: still there? [[delay_ms:800]]"
    faults = [e["fault"] for e in standin.journal if e["fault"]]
    # A run is listed from its creation, so on Assistants the look finds it and never POSTs.
    expected = ["drop_after"] if backend == "assistants" else ["drop_after", "slow", "drop_after"]
    assert faults == expected
    assert user_texts(standin, reply["thread_id"]) == ["still there? [[delay_ms:800]]"]
    runs = runs_in(standin, reply["thread_id"])
    # The answer comes from the first run; a second one, if the API let it start, was
    # cancelled before it added anything.
    assert runs[0]["status"] == "completed"
    assert all(r["status"] == "cancelled" for r in runs[1:])
    assert await drain(channel, topology.reply_queue, quiet_s=1.0) == []


async def test_a_retried_create_whose_run_ends_before_the_second_look_is_kept(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    backend: str,
) -> None:
    # The first create never reached the server; the second look comes after the new run
    # ended, so the turn it finds is that run's own: nothing to cancel, nothing doubled.
    create = RUN_CREATE[backend]
    look = r"/threads/[^/]+/runs$" if backend == "assistants" else r"/items$"
    standin.add_faults(
        [
            {"kind": "drop", "method": "POST", "path": create, "times": 1},
            {"kind": "slow", "method": "GET", "path": look, "delay_s": 0.6, "after": 1, "times": 1},
        ]
    )
    event = await publish(channel, topology, conversation_id="c-quick", text="quick one")
    [reply] = await replies_for(channel, topology, {event["event_id"]}, timeout_s=20)

    assert reply["status"] == "completed"
    assert [e["fault"] for e in standin.journal if e["fault"]] == ["drop", "slow"]
    assert [r["status"] for r in runs_in(standin, reply["thread_id"])] == ["completed"]
    assert not [e for e in standin.journal if e["path"].endswith("/cancel")]
    assert user_texts(standin, reply["thread_id"]) == ["quick one"]


async def test_lost_tool_outputs_are_not_sent_twice_though_their_run_ends_meanwhile(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    backend: str,
) -> None:
    # On Responses the outputs start a follow-up response: the same race as a lost create.
    standin.update_config({"run_duration_ms": 800})
    if backend == "assistants":
        submits = {"method": "POST", "path": r"/submit_tool_outputs$"}
        faults = [{"kind": "drop_after", "times": 1, **submits}]
    else:
        # Each rule counts the POSTs that reach it: the first create passes both.
        submits = {"method": "POST", "path": r"/responses$"}
        faults = [
            {"kind": "slow", "delay_s": 2.0, "after": 2, "times": 1, **submits},
            {"kind": "drop_after", "after": 1, "times": 1, **submits},
        ]
    standin.add_faults(faults)
    event = await publish(
        channel,
        topology,
        conversation_id="c-tool-lost",
        text="time? [[outcome:requires_action:current_time]]",
    )
    [reply] = await replies_for(channel, topology, {event["event_id"]}, timeout_s=20)

    assert reply["status"] == "completed"
    assert '"utc"' in reply["text"]
    expected = ["drop_after"] if backend == "assistants" else ["drop_after", "slow"]
    assert [e["fault"] for e in standin.journal if e["fault"]] == expected
    runs = runs_in(standin, reply["thread_id"])
    assert [r["status"] for r in runs if r["status"] != "cancelled"] == (
        ["completed"] if backend == "assistants" else ["completed", "completed"]
    )
    if backend == "responses":
        items = standin.state.conversations[reply["thread_id"]].items
        assert [i["type"] for i in items].count("function_call_output") == 1
        assert [r["status"] for r in runs] == ["completed", "completed", "cancelled"]
    assert await drain(channel, topology.reply_queue, quiet_s=1.0) == []


async def test_another_clients_run_on_the_thread_is_waited_out(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    backend: str,
) -> None:
    first = await publish(channel, topology, conversation_id="c-shared", text="first")
    [r1] = await replies_for(channel, topology, {first["event_id"]})
    thread_id = r1["thread_id"]
    # Someone else (a support agent's tool, say) starts a slow run on the same thread.
    async with openai.AsyncOpenAI(base_url=standin.base_url, api_key="sk-x") as client:
        if backend == "assistants":
            await client.beta.threads.runs.create(
                thread_id,
                assistant_id="asst_other",
                additional_messages=[{"role": "user", "content": "other [[delay_ms:1500]]"}],
            )
        else:
            await client.responses.create(
                model="gpt-4o-mini",
                conversation=thread_id,
                input="other [[delay_ms:1500]]",
                background=True,
                store=True,
            )
    second = await publish(channel, topology, conversation_id="c-shared", text="second")
    [r2] = await replies_for(channel, topology, {second["event_id"]}, timeout_s=20)

    assert r2["status"] == "completed"
    assert r2["text"].endswith("second")
    busy = [e for e in standin.journal if e["status"] == 400]
    assert busy, "the worker should have met the thread's lock at least once"
