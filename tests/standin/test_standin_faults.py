"""Fault injection as the SDK experiences it."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from standin import StandIn
from standin.faults import FaultInjector
from tests.standin.support import RawHttp


async def test_429_is_a_rate_limit_error_with_retry_after(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    standin.add_faults([{"kind": "status", "status": 429, "retry_after_s": 1.5, "times": 1}])
    with pytest.raises(openai.RateLimitError) as caught:
        await client.beta.threads.create()
    headers = caught.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("2", "1500")
    assert caught.value.code == "rate_limit_exceeded"
    assert standin.state.threads == {}


async def test_status_faults_fire_times_times_then_stop(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    standin.add_faults([{"kind": "status", "status": 503, "times": 2, "method": "POST"}])
    thread = None
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            thread = await client.beta.threads.create()
    thread = await client.beta.threads.create()
    assert list(standin.state.threads) == [thread.id]
    assert [e["fault"] for e in standin.journal] == ["status", "status", None]
    assert standin.fault_rules == []


async def test_after_lets_the_first_matches_through(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    standin.add_faults(
        [{"kind": "status", "status": 500, "after": 2, "times": 1, "method": "POST"}]
    )
    await client.beta.threads.create()
    await client.beta.threads.retrieve((await client.beta.threads.create()).id)
    with pytest.raises(openai.InternalServerError):
        await client.beta.threads.create()
    await client.beta.threads.create()
    assert [e["fault"] for e in standin.journal] == [None, None, None, "status", None]


async def test_sdk_retries_honour_retry_after_ms(standin: StandIn) -> None:
    standin.add_faults([{"kind": "status", "status": 429, "retry_after_s": 0.05, "times": 2}])
    retrying = openai.AsyncOpenAI(base_url=standin.base_url, api_key="sk-test", max_retries=2)
    async with retrying:
        await retrying.beta.threads.create()
    assert [(e["status"], e["retry_count"]) for e in standin.journal] == [
        (429, 0),
        (429, 1),
        (200, 2),
    ]
    gap = standin.journal[1]["at"] - standin.journal[0]["at"]
    assert 0.04 <= gap < 0.5


async def test_drop_closes_the_connection_before_anything_happens(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    standin.add_faults([{"kind": "drop", "path": r"^/v1/threads$", "times": 1}])
    with pytest.raises(openai.APIConnectionError):
        await client.beta.threads.create()
    assert standin.state.threads == {}
    (entry,) = standin.journal
    assert (entry["fault"], entry["status"]) == ("drop", None)


async def test_drop_after_performs_the_request_but_loses_the_answer(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    text = "hi [[delay_ms:500]]"
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": text}])
    standin.add_faults([{"kind": "drop_after", "method": "POST", "path": "/runs$", "times": 1}])
    with pytest.raises(openai.APIConnectionError):
        await client.beta.threads.runs.create(thread.id, assistant_id="asst_x")
    (run,) = standin.state.threads[thread.id].runs
    entry = standin.journal[-1]
    assert (entry["fault"], entry["status"], entry["run_id"]) == ("drop_after", 200, run.id)
    # A client retrying the "failed" POST meets the run it already started.
    with pytest.raises(openai.BadRequestError, match="already has an active run"):
        await client.beta.threads.runs.create(thread.id, assistant_id="asst_x")


async def test_slow_delays_the_answer(client: openai.AsyncOpenAI, standin: StandIn) -> None:
    standin.add_faults([{"kind": "slow", "delay_s": 0.2, "method": "GET", "times": 1}])
    thread = await client.beta.threads.create()
    started = time.monotonic()
    await client.beta.threads.retrieve(thread.id)
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    await client.beta.threads.retrieve(thread.id)
    assert time.monotonic() - started < 0.2
    assert [e["fault"] for e in standin.journal] == [None, "slow", None]


async def test_first_matching_rule_wins_and_filters_apply(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    standin.add_faults(
        [
            {"kind": "status", "status": 404, "method": "GET", "path": "/messages"},
            {"kind": "status", "status": 409, "path": "/messages"},
            {"kind": "status", "status": 500, "path": "/messages"},
        ]
    )
    thread = await client.beta.threads.create()
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.messages.list(thread.id)
    with pytest.raises(openai.ConflictError):
        await client.beta.threads.messages.create(thread.id, role="user", content="x")
    await client.beta.threads.retrieve(thread.id)


def _fire_pattern(seed: int, rate: float, count: int) -> list[bool]:
    faults = FaultInjector(seed)
    faults.add([{"kind": "status", "status": 500, "rate": rate}])
    return [faults.pick("GET", "/v1/threads/x") is not None for _ in range(count)]


def test_rate_is_reproducible_from_the_seed() -> None:
    pattern = _fire_pattern(seed=7, rate=0.3, count=200)
    assert pattern == _fire_pattern(seed=7, rate=0.3, count=200)
    assert pattern != _fire_pattern(seed=8, rate=0.3, count=200)
    assert 30 <= sum(pattern) <= 90


async def test_rate_faults_over_http(client: openai.AsyncOpenAI, standin: StandIn) -> None:
    standin.add_faults([{"kind": "status", "status": 500, "rate": 0.5, "method": "GET"}])
    thread = await client.beta.threads.create()
    outcomes = []
    for _ in range(40):
        try:
            await client.beta.threads.retrieve(thread.id)
            outcomes.append(True)
        except openai.InternalServerError:
            outcomes.append(False)
    assert 5 < outcomes.count(False) < 35


async def test_control_api_manages_rules_and_is_never_faulted(
    http: RawHttp, standin: StandIn
) -> None:
    added = await http.post(
        "/_standin/faults", {"rules": [{"kind": "status", "status": 500, "path": ".*"}]}
    )
    assert added.status == 200
    assert added.body["rules"][0]["kind"] == "status"
    assert (await http.get("/_standin/health")).status == 200
    assert (await http.get("/v1/threads/thread_x")).status == 500

    assert (await http.delete("/_standin/faults")).body == {"rules": []}
    assert (await http.get("/v1/threads/thread_x")).status == 404


@pytest.mark.parametrize(
    "rule",
    [
        {"kind": "explode"},
        {"kind": "status", "status": 200},
        {"kind": "status", "status": 500, "times": 0},
        {"kind": "status", "status": 500, "rate": 1.5},
        {"kind": "status", "status": 500, "path": "("},
        {"kind": "slow"},
        {"kind": "drop", "typo_field": 1},
        {"kind": "drop", "after": -1},
    ],
)
async def test_invalid_rules_are_400_and_add_nothing(
    http: RawHttp, standin: StandIn, rule: dict[str, Any]
) -> None:
    reply = await http.post("/_standin/faults", {"rules": [{"kind": "drop", "times": 1}, rule]})
    assert reply.status == 400
    assert reply.body["error"]["type"] == "invalid_request_error"
    assert standin.fault_rules == []
