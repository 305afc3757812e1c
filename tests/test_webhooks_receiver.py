"""The webhook receiver on a real port and a real database: deliveries signed as OpenAI signs
them (Standard Webhooks), recorded once, refused with no effect, counted."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from typer.testing import CliRunner

from worker.ops.cli import app
from worker.settings import Settings
from worker.store.postgres import create_pool
from worker.webhooks.receiver import (
    OUTCOMES,
    WEBHOOK_PATH,
    WebhookMetrics,
    WebhookReceiver,
    WebhookService,
)
from worker.webhooks.store import DeliveryStore
from worker.webhooks.verify import Refusal, Refused, Verifier, signed_headers

SECRET = "whsec_" + base64.b64encode(b"the current signing secret, 32 b").decode()
PREVIOUS = "whsec_" + base64.b64encode(b"the previous signing secret, 32b").decode()
THIRD = "whsec_" + base64.b64encode(b"a secret nobody configured, 32 b").decode()
MAX_BODY_BYTES = 4096
CHANNEL = "aw_response_ended"
ENDED_TYPES = ("response.completed", "response.failed", "response.cancelled", "response.incomplete")


def sign(body: bytes, secret: str, *, webhook_id: str, timestamp: int) -> dict[str, str]:
    """The headers OpenAI sends: HMAC-SHA256 over "{id}.{timestamp}.{body}", keyed with the
    base64 after whsec_, as `v1,<base64>`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }


def event_body(event_type: str = "response.completed", response_id: str = "resp_1") -> bytes:
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "created_at": int(time.time()),
        "type": event_type,
        "data": {"id": response_id},
    }
    return json.dumps(event).encode()


@dataclass
class Post:
    """One request to the receiver."""

    body: bytes
    headers: dict[str, str]
    chunked: bool = False  # sent without a Content-Length


def signed(
    body: bytes,
    secret: str = SECRET,
    *,
    webhook_id: str | None = None,
    age_s: int = 0,
) -> Post:
    webhook_id = webhook_id or f"wh_{uuid.uuid4().hex}"
    return Post(body, sign(body, secret, webhook_id=webhook_id, timestamp=int(time.time()) - age_s))


def test_the_signer_signs_as_the_sdk_verifies() -> None:
    client = openai.OpenAI(api_key="sk-unused")
    post = signed(event_body())
    client.webhooks.verify_signature(post.body, post.headers, secret=SECRET)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.verify_signature(post.body, post.headers, secret=THIRD)
    client.close()


@dataclass
class Receiving:
    """A receiver on 127.0.0.1:0 over the test's database, and a LISTENing connection."""

    url: str
    metrics: WebhookMetrics
    session: aiohttp.ClientSession
    db: asyncpg.Connection
    notified: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    async def post(self, post: Post) -> tuple[int, dict[str, Any]]:
        data: Any = _chunks(post.body) if post.chunked else post.body
        async with self.session.post(self.url + WEBHOOK_PATH, data=data, headers=post.headers) as r:
            return r.status, await r.json()

    async def next_notification(self) -> str:
        return await asyncio.wait_for(self.notified.get(), timeout=5)

    async def ended(self) -> set[tuple[str, str]]:
        rows = await self.db.fetch("SELECT response_id, event_type FROM ended_responses")
        return {(r["response_id"], r["event_type"]) for r in rows}

    async def deliveries(self) -> int:
        count: int = await self.db.fetchval("SELECT count(*) FROM webhook_deliveries")
        return count

    def counted(self) -> dict[str, float]:
        return deliveries_counted(self.metrics.exposition().decode())


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 1024):
        yield body[start : start + 1024]


def deliveries_counted(exposition: str) -> dict[str, float]:
    [family] = [
        f
        for f in text_string_to_metric_families(exposition)
        if f.name == "assistant_worker_webhook_deliveries"
    ]
    return {s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_total")}


@pytest.fixture
async def receiving(database_url: str) -> AsyncIterator[Receiving]:
    pool = await create_pool(database_url, max_size=2)
    metrics = WebhookMetrics()
    receiver = WebhookReceiver(Verifier(SECRET, PREVIOUS), metrics, MAX_BODY_BYTES)
    port = await receiver.start("127.0.0.1", 0)
    receiver.connect(DeliveryStore(pool))
    db = await asyncpg.connect(database_url)
    session = aiohttp.ClientSession()
    state = Receiving(f"http://127.0.0.1:{port}", metrics, session, db)
    await db.add_listener(CHANNEL, lambda *args: state.notified.put_nowait(args[3]))
    yield state
    await session.close()
    await db.close()
    await receiver.stop()
    await pool.close()


async def test_each_ending_is_recorded_and_wakes_the_workers(receiving: Receiving) -> None:
    for n, event_type in enumerate(ENDED_TYPES):
        status, answer = await receiving.post(signed(event_body(event_type, f"resp_{n}")))
        assert (status, answer) == (200, {"status": "accepted"})
        assert await receiving.next_notification() == f"resp_{n}"
    assert await receiving.ended() == {(f"resp_{n}", t) for n, t in enumerate(ENDED_TYPES)}
    assert await receiving.deliveries() == len(ENDED_TYPES)


async def test_a_replayed_delivery_is_answered_200_and_changes_nothing(
    receiving: Receiving,
) -> None:
    body = event_body("response.completed", "resp_first")
    assert (await receiving.post(signed(body, webhook_id="wh_1")))[0] == 200
    assert await receiving.next_notification() == "resp_first"
    # OpenAI's retry: the same webhook-id, signed again later.
    replay = signed(body, webhook_id="wh_1", age_s=-30)
    assert await receiving.post(replay) == (200, {"status": "duplicate"})
    assert (await receiving.post(signed(event_body(response_id="resp_next"))))[0] == 200
    # Notifications come in commit order: had the replay notified, its would come first.
    assert await receiving.next_notification() == "resp_next"
    assert await receiving.ended() == {
        ("resp_first", "response.completed"),
        ("resp_next", "response.completed"),
    }
    assert await receiving.deliveries() == 2
    counted = receiving.counted()
    assert (counted["accepted"], counted["duplicate"]) == (2, 1)


def _forged() -> Post:
    return signed(event_body(), THIRD)


def _tampered() -> Post:
    post = signed(event_body(response_id="resp_1"))
    return Post(post.body.replace(b"resp_1", b"resp_2"), post.headers)


def _without(header: str) -> Callable[[], Post]:
    def make() -> Post:
        post = signed(event_body())
        del post.headers[header]
        return post

    return make


def _timestamp_not_a_number() -> Post:
    post = signed(event_body())
    post.headers["webhook-timestamp"] = "yesterday"
    return post


def _oversized(*, chunked: bool) -> Callable[[], Post]:
    def make() -> Post:
        body = json.loads(event_body())
        body["padding"] = "x" * MAX_BODY_BYTES
        post = signed(json.dumps(body).encode())
        post.chunked = chunked
        return post

    return make


WITHOUT_RESPONSE_ID = b'{"type": "response.failed", "data": {}}'
REFUSED: list[tuple[str, Callable[[], Post], int, Refusal]] = [
    ("forged", _forged, 401, Refusal.BAD_SIGNATURE),
    ("tampered", _tampered, 401, Refusal.BAD_SIGNATURE),
    ("no-headers", lambda: Post(event_body(), {}), 401, Refusal.MISSING_SIGNATURE),
    ("no-id", _without("webhook-id"), 401, Refusal.MISSING_SIGNATURE),
    ("no-timestamp", _without("webhook-timestamp"), 401, Refusal.MISSING_SIGNATURE),
    ("no-signature", _without("webhook-signature"), 401, Refusal.MISSING_SIGNATURE),
    ("6-min-old", lambda: signed(event_body(), age_s=360), 400, Refusal.STALE_TIMESTAMP),
    ("6-min-ahead", lambda: signed(event_body(), age_s=-360), 400, Refusal.STALE_TIMESTAMP),
    ("timestamp-nan", _timestamp_not_a_number, 400, Refusal.MALFORMED),
    ("too-large", _oversized(chunked=False), 400, Refusal.TOO_LARGE),
    ("too-large-chunked", _oversized(chunked=True), 400, Refusal.TOO_LARGE),
    ("batch", lambda: signed(event_body("batch.completed")), 400, Refusal.UNKNOWN_TYPE),
    ("not-json", lambda: signed(b"{not json"), 400, Refusal.MALFORMED),
    ("not-utf8", lambda: signed(b'{"type": "\xff"}'), 400, Refusal.MALFORMED),
    ("no-data-id", lambda: signed(WITHOUT_RESPONSE_ID), 400, Refusal.MALFORMED),
    ("array", lambda: signed(b"[]"), 400, Refusal.MALFORMED),
]


@pytest.mark.parametrize(
    ("make", "status", "refusal"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
async def test_a_refused_delivery_has_no_effect(
    receiving: Receiving, make: Callable[[], Post], status: int, refusal: Refusal
) -> None:
    assert await receiving.post(make()) == (status, {"refused": refusal.value})
    assert await receiving.ended() == set()
    assert await receiving.deliveries() == 0
    counted = receiving.counted()
    assert counted[refusal.value] == 1
    assert sum(counted.values()) == 1


async def test_the_previous_secret_is_accepted_during_a_rotation(receiving: Receiving) -> None:
    for n, secret in enumerate((PREVIOUS, SECRET)):
        assert (await receiving.post(signed(event_body(response_id=f"resp_{n}"), secret)))[0] == 200
    assert (await receiving.post(signed(event_body(response_id="resp_x"), THIRD)))[0] == 401
    assert {response_id for response_id, _ in await receiving.ended()} == {"resp_0", "resp_1"}


def test_after_the_rotation_the_previous_secret_is_refused() -> None:
    post = signed(event_body(), PREVIOUS)
    verifier = Verifier(SECRET)
    with pytest.raises(Refused) as refused:
        verifier.verify(post.body, signed_headers(post.headers))
    assert refused.value.refusal is Refusal.BAD_SIGNATURE
    verifier.close()


async def test_metrics_count_every_outcome_from_zero(receiving: Receiving) -> None:
    async with receiving.session.get(receiving.url + "/metrics") as page:
        assert deliveries_counted(await page.text()) == dict.fromkeys(OUTCOMES, 0.0)
    body = event_body()
    await receiving.post(signed(body, webhook_id="wh_same"))
    await receiving.post(signed(body, webhook_id="wh_same"))
    await receiving.post(_forged())
    await receiving.post(signed(event_body(), age_s=360))
    async with receiving.session.get(receiving.url + "/metrics") as page:
        counted = deliveries_counted(await page.text())
    expected = {"accepted": 1, "duplicate": 1, "bad_signature": 1, "stale_timestamp": 1}
    assert counted == {outcome: expected.get(outcome, 0) for outcome in OUTCOMES}


def ready_gauge(exposition: str) -> float:
    [family] = [
        f
        for f in text_string_to_metric_families(exposition)
        if f.name == "assistant_worker_webhooks_ready"
    ]
    [sample] = family.samples
    return sample.value


async def readiness(session: aiohttp.ClientSession, base: str) -> tuple[int, float]:
    """What /readyz answers, and what the gauge on /metrics says, one after the other."""
    async with session.get(base + "/readyz") as ready:
        status = ready.status
    async with session.get(base + "/metrics") as page:
        return status, ready_gauge(await page.text())


async def test_the_ready_gauge_says_what_readyz_says(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=2)
    metrics = WebhookMetrics()
    receiver = WebhookReceiver(Verifier(SECRET), metrics, MAX_BODY_BYTES)
    assert ready_gauge(metrics.exposition().decode()) == 0.0
    port = await receiver.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            assert await readiness(session, base) == (503, 0.0), "listening, no Postgres yet"
            receiver.connect(DeliveryStore(pool))
            assert await readiness(session, base) == (200, 1.0)
            post = signed(event_body())
            async with session.post(base + WEBHOOK_PATH, data=post.body, headers=post.headers) as r:
                assert r.status == 200
    finally:
        await receiver.stop()
        await pool.close()
    assert ready_gauge(metrics.exposition().decode()) == 0.0, "stopped: not ready"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_a_delivery_that_cannot_be_recorded_is_answered_503() -> None:
    # A pool that connects on first use, to a port nobody listens on: Postgres is down.
    pool = await asyncpg.create_pool(
        f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres", min_size=0
    )
    metrics = WebhookMetrics()
    receiver = WebhookReceiver(Verifier(SECRET), metrics, MAX_BODY_BYTES)
    port = await receiver.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
    try:
        async with aiohttp.ClientSession() as session:
            post = signed(event_body())
            async with session.post(url, data=post.body, headers=post.headers) as answer:
                assert answer.status == 503  # not connected yet
            receiver.connect(DeliveryStore(pool))
            async with session.post(url, data=post.body, headers=post.headers) as answer:
                assert (answer.status, await answer.json()) == (503, {"status": "unavailable"})
    finally:
        await receiver.stop()
        await pool.close()
    assert deliveries_counted(metrics.exposition().decode())["unavailable"] == 2


def service_settings(database_url: str) -> Settings:
    return Settings(
        database_url=SecretStr(database_url),
        openai_webhook_secret=SecretStr(SECRET),
        webhook_host="127.0.0.1",
        webhook_port=0,
        shutdown_grace_s=2.0,
    )


async def test_the_service_waits_for_postgres_then_records(database_url: str) -> None:
    service = WebhookService(service_settings(database_url), Verifier(SECRET))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), timeout=10)
    base = f"http://127.0.0.1:{service.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/readyz") as ready:
            assert (ready.status, await ready.json()) == (200, {"ready": True})
        assert await readiness(session, base) == (200, 1.0)
        post = signed(event_body(response_id="resp_served"))
        async with session.post(base + WEBHOOK_PATH, data=post.body, headers=post.headers) as r:
            assert r.status == 200
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    db = await asyncpg.connect(database_url)
    assert await db.fetchval("SELECT response_id FROM ended_responses") == "resp_served"
    await db.close()


async def test_while_postgres_is_down_the_service_is_alive_and_unready() -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    service = WebhookService(service_settings(dsn), Verifier(SECRET))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    while service.receiver.startup.waiting_for is None:  # the first connect has failed
        assert not task.done()
        await asyncio.sleep(0.01)
    base = f"http://127.0.0.1:{service.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/livez") as alive:
            assert alive.status == 200
        async with session.get(base + "/readyz") as ready:
            assert ready.status == 503
            assert (await ready.json())["waiting_for"] == "postgres: connection refused"
        assert await readiness(session, base) == (503, 0.0)
    stop.set()
    await asyncio.wait_for(task, timeout=10)


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({}, "AW_WEBHOOK_SECRET or OPENAI_WEBHOOK_SECRET"),
        ({"AW_WEBHOOK_SECRET": "whsec_%%%%"}, "AW_WEBHOOK_SECRET"),
        ({"AW_WEBHOOK_SECRET": SECRET, "AW_WEBHOOK_SECRET_PREVIOUS": "whsec_x"}, "_PREVIOUS"),
    ],
    ids=["unset", "invalid", "invalid-previous"],
)
def test_the_command_refuses_to_start_without_a_usable_secret(
    environment: dict[str, str], named: str
) -> None:
    unset = dict.fromkeys(
        ("AW_WEBHOOK_SECRET", "OPENAI_WEBHOOK_SECRET", "AW_WEBHOOK_SECRET_PREVIOUS"), None
    )
    result = CliRunner().invoke(app, ["webhooks"], env={**unset, **environment})
    assert result.exit_code == 2
    assert named in result.output
    assert len(result.output.strip().splitlines()) == 1
    for value in environment.values():
        assert value not in result.output
