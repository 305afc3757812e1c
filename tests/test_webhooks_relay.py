"""Webhooks instead of polling, end to end: the stand-in posts signed deliveries when a
background response ends, the real receiver records them in Postgres and NOTIFYs, and the
owner of the run (whichever worker it is) reads the reply with one retrieve. Dropped
deliveries are picked up by the sweep; an ending recorded before the run's ID was stored is
read from the table."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from standin.webhooks import signature
from tests.conftest import RunningWorker, start_worker
from tests.support import publish, replies_for
from tests.webhook_receiver import running_receiver, with_webhooks
from worker.settings import Settings, Topology
from worker.store.postgres import PostgresStore
from worker.webhooks.receiver import WEBHOOK_PATH, WebhookService

Json = dict[str, Any]
# Long enough that only a webhook (or the table) explains a quick answer.
SLOW_SWEEP_S = 30.0


@pytest.fixture
def webhook_settings(settings: Settings, standin: StandIn) -> Settings:
    return with_webhooks(settings, standin, SLOW_SWEEP_S)


@pytest.fixture
async def receiver(webhook_settings: Settings, standin: StandIn) -> AsyncIterator[WebhookService]:
    async with running_receiver(webhook_settings, standin) as service:
        yield service


def _accepted(receiver: WebhookService) -> float:
    registry = receiver.metrics.registry
    value = registry.get_sample_value(
        "assistant_worker_webhook_deliveries_total", {"outcome": "accepted"}
    )
    return value or 0.0


def _runs_finished(worker: RunningWorker) -> float:
    registry = worker.service.metrics.registry
    labels = {"backend": "responses", "status": "completed"}
    return registry.get_sample_value("assistant_worker_runs_finished_total", labels) or 0.0


def _api_calls(standin: StandIn, response_id: str) -> list[str]:
    return [f"{e['method']} {e['path']}" for e in standin.journal if response_id in e["path"]]


async def _deliver(
    receiver: WebhookService, standin: StandIn, response_id: str, webhook_id: str
) -> int:
    """Posts a genuine `response.completed` delivery, signed as the stand-in signs; the status."""
    body = json.dumps(
        {
            "id": f"evt_{webhook_id}",
            "object": "event",
            "created_at": int(time.time()),
            "type": "response.completed",
            "data": {"id": response_id},
        }
    ).encode()
    now = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(now),
        "webhook-signature": signature(standin.webhook_secret, webhook_id, now, body),
    }
    url = f"http://127.0.0.1:{receiver.port}{WEBHOOK_PATH}"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
        return r.status


async def _running_response(standin: StandIn, timeout_s: float = 10) -> str:
    async with asyncio.timeout(timeout_s):
        while True:
            running = [
                r["id"]
                for r in standin.run_records()
                if r["kind"] == "response" and r["ended_at"] is None
            ]
            if running:
                return str(running[0])
            await asyncio.sleep(0.02)


async def _ask(channel: AbstractChannel, topology: Topology, conversation: str, text: str) -> Json:
    event = await publish(channel, topology, conversation_id=conversation, text=text)
    [reply] = await replies_for(channel, topology, {event["event_id"]}, timeout_s=20)
    return reply


async def test_a_run_ends_by_its_webhook_with_one_retrieve(
    receiver: WebhookService,
    webhook_settings: Settings,
    standin: StandIn,
    channel: AbstractChannel,
    topology: Topology,
) -> None:
    worker = await start_worker(webhook_settings)
    try:
        started = time.monotonic()
        reply = await _ask(channel, topology, "c-hook", "hello [[delay_ms:600]]")
        took_s = time.monotonic() - started
    finally:
        await worker.shutdown()

    assert reply["status"] == "completed"
    assert reply["text"] == "Echo: hello [[delay_ms:600]]"
    # The create's answer carries the ID; one retrieve reads the ended response: no polls.
    assert _api_calls(standin, reply["run_id"]) == [f"GET /v1/responses/{reply['run_id']}"]
    assert [a["type"] for a in standin.webhook_attempts()] == ["response.completed"]
    assert _accepted(receiver) == 1
    assert took_s < SLOW_SWEEP_S


async def test_a_dropped_webhook_is_picked_up_by_the_sweep(
    receiver: WebhookService,
    webhook_settings: Settings,
    standin: StandIn,
    channel: AbstractChannel,
    topology: Topology,
) -> None:
    standin.add_faults([{"kind": "webhook_drop", "times": 1}])
    worker = await start_worker(webhook_settings.model_copy(update={"webhook_sweep_s": 1.0}))
    try:
        reply = await _ask(channel, topology, "c-dropped", "anyone there?")
    finally:
        await worker.shutdown()

    assert reply["status"] == "completed"
    assert [a["fault"] for a in standin.webhook_attempts()] == ["webhook_drop"]
    retrieves = _api_calls(standin, reply["run_id"])
    assert 1 <= len(retrieves) <= 2  # the sweep's look (and one more if the run was not done)
    assert _accepted(receiver) == 0


async def test_an_ending_recorded_before_the_run_id_is_stored_is_not_missed(
    receiver: WebhookService,
    webhook_settings: Settings,
    standin: StandIn,
    channel: AbstractChannel,
    topology: Topology,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worker is slow to store the run's ID: the response ends and its webhook is recorded
    # (and NOTIFYed, to nobody waiting) before the owner starts waiting for it.
    record_run_started = PostgresStore.record_run_started

    async def slowly(self: PostgresStore, *args: Any) -> None:
        await standin.webhooks_idle(timeout_s=5)
        await record_run_started(self, *args)

    monkeypatch.setattr(PostgresStore, "record_run_started", slowly)
    worker = await start_worker(webhook_settings)
    try:
        started = time.monotonic()
        reply = await _ask(channel, topology, "c-early", "quick one")
        took_s = time.monotonic() - started
    finally:
        await worker.shutdown()

    assert reply["status"] == "completed"
    assert _accepted(receiver) == 1
    assert _api_calls(standin, reply["run_id"]) == [f"GET /v1/responses/{reply['run_id']}"]
    assert took_s < SLOW_SWEEP_S


async def test_the_ending_reaches_whichever_replica_owns_the_run(
    receiver: WebhookService,
    webhook_settings: Settings,
    standin: StandIn,
    channel: AbstractChannel,
    topology: Topology,
) -> None:
    workers: list[RunningWorker] = []
    for name in ("replica-a", "replica-b"):
        workers.append(
            await start_worker(webhook_settings.model_copy(update={"worker_name": name}))
        )
    try:
        started = time.monotonic()
        events = [
            await publish(
                channel, topology, conversation_id=f"c-replica-{n}", text=f"hi {n} [[delay_ms:300]]"
            )
            for n in range(8)
        ]
        ids = {e["event_id"] for e in events}
        replies = await replies_for(channel, topology, ids, timeout_s=20)
        took_s = time.monotonic() - started
    finally:
        for worker in workers:
            await worker.shutdown()

    assert {r["status"] for r in replies} == {"completed"}
    # Both owned some: one receiver's NOTIFY reached each.
    assert [_runs_finished(w) > 0 for w in workers] == [True, True]
    for reply in replies:
        assert _api_calls(standin, reply["run_id"]) == [f"GET /v1/responses/{reply['run_id']}"]
    assert _accepted(receiver) == 8
    assert took_s < SLOW_SWEEP_S


async def test_a_webhook_for_a_response_nobody_owns_changes_nothing(
    receiver: WebhookService,
    webhook_settings: Settings,
    standin: StandIn,
    channel: AbstractChannel,
    topology: Topology,
) -> None:
    # Another application's response, or one whose conversation was erased: recorded (so a
    # retry of it is a duplicate), answered 200, and no worker does anything with it.
    worker = await start_worker(webhook_settings)
    try:
        assert await _deliver(receiver, standin, "resp_nobody_knows", "wh_stranger") == 200
        reply = await _ask(channel, topology, "c-after-stranger", "still fine?")
    finally:
        await worker.shutdown()

    assert reply["status"] == "completed"
    assert _accepted(receiver) == 2  # the stranger's, then the reply's own
    assert _api_calls(standin, "resp_nobody_knows") == []


async def test_an_ending_the_api_does_not_show_yet_sends_the_run_back_to_polling(
    receiver: WebhookService,
    webhook_settings: Settings,
    standin: StandIn,
    channel: AbstractChannel,
    topology: Topology,
) -> None:
    # A delivery may say a response ended before a retrieve shows it (a read from a replica
    # behind, say), and no other delivery comes (the stand-in's own is dropped). The owner
    # then polls it on the schedule: it neither waits for the sweep nor retrieves it again
    # and again because the table says it ended.
    standin.add_faults([{"kind": "webhook_drop", "times": 1}])
    worker = await start_worker(webhook_settings)
    try:
        started = time.monotonic()
        event = await publish(
            channel, topology, conversation_id="c-early-word", text="slow [[delay_ms:2500]]"
        )
        response_id = await _running_response(standin)
        assert await _deliver(receiver, standin, response_id, "wh_early_word") == 200
        [reply] = await replies_for(channel, topology, {event["event_id"]}, timeout_s=20)
        took_s = time.monotonic() - started
    finally:
        await worker.shutdown()

    assert reply["status"] == "completed"
    assert reply["run_id"] == response_id
    assert took_s < SLOW_SWEEP_S / 2
    retrieves = _api_calls(standin, response_id)
    # The early word's retrieve, then the schedule's polls over about 2.5 s: a dozen or so.
    assert 2 <= len(retrieves) <= 25, retrieves
