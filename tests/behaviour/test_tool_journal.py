"""The record of tool calls, on both stores: begun before the handler runs, ended once, and
read back for the reply's summary (erase forgetting them: test_steering.py)."""

from __future__ import annotations

from tests.behaviour.relay import Relay, event
from tests.behaviour.test_leases import take
from worker.store.ports import Store
from worker.store.records import ToolCallState


async def test_a_call_is_begun_once_and_its_first_ending_stands(store: Store) -> None:
    lease = await take(store, "c-journal", "owner")
    found = await store.next_batch(lease)
    assert found is not None
    batch_id = found.batch.batch_id

    first = await store.begin_tool_call(lease, batch_id, "call_1", "lookup", '{"q": 1}')
    again = await store.begin_tool_call(lease, batch_id, "call_1", "lookup", '{"q": 1}')

    assert (first.began, first.state) == (True, ToolCallState.STARTED)
    # A later owner learns that somebody began it, and not how it ended.
    assert (again.began, again.state, again.output) == (False, ToolCallState.STARTED, None)
    await store.end_tool_call(lease, batch_id, "call_1", ToolCallState.OK, "found", 12)
    await store.end_tool_call(lease, batch_id, "call_1", ToolCallState.ERROR, "late", 99)
    ended = await store.begin_tool_call(lease, batch_id, "call_1", "lookup", '{"q": 1}')
    assert (ended.began, ended.state, ended.output, ended.duration_ms) == (
        False,
        ToolCallState.OK,
        "found",
        12,
    )
    await store.begin_tool_call(lease, batch_id, "call_2", "other", "{}")
    calls = await store.batch_tool_calls(batch_id)
    assert [(c.call_id, c.state) for c in calls] == [
        ("call_1", ToolCallState.OK),
        ("call_2", ToolCallState.STARTED),
    ]


async def test_a_served_call_is_recorded_and_summed_up_in_the_reply(relay: Relay) -> None:
    await relay.deliver(event("c-tools", "what time is it? [[call:current_time]]"))

    [reply] = await relay.replies()
    [call] = reply["tool_calls"]
    assert (call["type"], call["name"], call["status"]) == ("function", "current_time", "ok")
    assert isinstance(call["duration_ms"], int)
    assert "arguments" not in call  # the shorthand profile shows no arguments
    assert "tool current_time said" in reply["text"]
