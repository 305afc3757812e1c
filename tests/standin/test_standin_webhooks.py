"""Webhooks the stand-in sends, as a real receiver on 127.0.0.1 and the SDK's verifier see them."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from aiohttp import web
from multidict import CIMultiDict
from openai.types.webhooks import (
    ResponseCancelledWebhookEvent,
    ResponseCompletedWebhookEvent,
    ResponseFailedWebhookEvent,
    ResponseIncompleteWebhookEvent,
)

from standin import StandIn
from standin.config import new_webhook_secret
from standin.faults import FAULT_KINDS, FaultInjector
from tests.standin.support import RawHttp, wait_for, wait_until

MODEL = "gpt-test"
FAST_RETRIES = {"webhook_retry_base_ms": 20}
ResponseEvent = (
    ResponseCompletedWebhookEvent
    | ResponseFailedWebhookEvent
    | ResponseCancelledWebhookEvent
    | ResponseIncompleteWebhookEvent
)


@dataclass
class Delivery:
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Receiver:
    """A webhook endpoint that keeps what it got and answers as scripted: the statuses in
    ``answers`` first, then 200; with ``verify_secret`` set, 400 to a bad signature."""

    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    verify_secret: str | None = None

    async def handle(self, request: web.Request) -> web.Response:
        delivery = Delivery(CIMultiDict(request.headers), await request.read())
        self.deliveries.append(delivery)
        if self.verify_secret is not None and not _verifies(delivery, self.verify_secret):
            return web.Response(status=400)
        return web.Response(status=self.answers.pop(0) if self.answers else 200)

    def response_ids(self, secret: str) -> list[str]:
        return [_unwrap(delivery, secret).data.id for delivery in self.deliveries]


def _unwrap(delivery: Delivery, secret: str) -> ResponseEvent:
    """The SDK's verification and parsing, as a receiver does it."""
    # unwrap needs no connection: a client that is never used sends nothing.
    verifier = openai.AsyncOpenAI(api_key="sk-test", webhook_secret=secret)
    event = verifier.webhooks.unwrap(delivery.body, delivery.headers)
    assert isinstance(event, ResponseEvent)
    return event


def _verifies(delivery: Delivery, secret: str) -> bool:
    try:
        _unwrap(delivery, secret)
    except openai.InvalidWebhookSignatureError:
        return False
    return True


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    yield receiver
    await runner.cleanup()


@pytest.fixture
def hooked(standin: StandIn, receiver: Receiver) -> Receiver:
    """The receiver, with the stand-in sending it webhooks and retrying fast."""
    standin.update_config({"webhook_url": receiver.url, **FAST_RETRIES})
    return receiver


async def _start(client: openai.AsyncOpenAI, text: str = "hi") -> str:
    response = await client.responses.create(model=MODEL, background=True, store=True, input=text)
    return response.id


async def _settle(client: openai.AsyncOpenAI, standin: StandIn, text: str = "hi") -> str:
    """A background response run to its end, and every webhook it brings delivered."""
    response_id = await _start(client, text)
    await wait_until(standin, response_id)
    await standin.webhooks_idle()
    return response_id


def _tries(standin: StandIn) -> list[tuple[int, int | None, str | None]]:
    return [(a["attempt"], a["status"], a["fault"]) for a in standin.webhook_attempts()]


async def test_a_completed_background_response_is_delivered_once_and_verifies(
    client: openai.AsyncOpenAI, standin: StandIn, hooked: Receiver
) -> None:
    response_id = await _settle(client, standin)

    (delivery,) = hooked.deliveries
    event = _unwrap(delivery, standin.webhook_secret)
    assert isinstance(event, ResponseCompletedWebhookEvent)
    assert (event.type, event.data.id, event.object) == ("response.completed", response_id, "event")
    assert event.id.startswith("evt_")
    assert event.created_at == int(standin.state.responses[response_id].ended_at or 0)
    assert delivery.headers["content-type"] == "application/json"
    (attempt,) = standin.webhook_attempts()
    assert attempt == {
        "event_id": event.id,
        "webhook_id": delivery.headers["webhook-id"],
        "type": "response.completed",
        "response_id": response_id,
        "attempt": 1,
        "status": 200,
        "fault": None,
        "at": attempt["at"],
    }
    assert delivery.headers["webhook-timestamp"] == str(int(attempt["at"]))


@pytest.mark.parametrize(
    ("text", "event_type"),
    [("[[outcome:failed]]", "response.failed"), ("[[outcome:incomplete]]", "response.incomplete")],
)
async def test_each_ending_sends_its_own_event_type(
    client: openai.AsyncOpenAI, standin: StandIn, hooked: Receiver, text: str, event_type: str
) -> None:
    response_id = await _settle(client, standin, text)
    (delivery,) = hooked.deliveries
    event = _unwrap(delivery, standin.webhook_secret)
    assert (event.type, event.data.id) == (event_type, response_id)


async def test_a_cancelled_response_sends_response_cancelled(
    client: openai.AsyncOpenAI, standin: StandIn, hooked: Receiver
) -> None:
    response_id = await _start(client, "slow [[delay_ms:5000]]")
    await client.responses.cancel(response_id)
    await standin.webhooks_idle()
    (delivery,) = hooked.deliveries
    event = _unwrap(delivery, standin.webhook_secret)
    assert (event.type, event.data.id) == ("response.cancelled", response_id)


async def test_a_foreground_response_sends_nothing(
    client: openai.AsyncOpenAI, standin: StandIn, hooked: Receiver
) -> None:
    response = await client.responses.create(model=MODEL, input="right away")
    assert response.status == "completed"
    await standin.webhooks_idle()
    assert (hooked.deliveries, standin.webhook_attempts()) == ([], [])


async def test_without_a_webhook_url_nothing_is_sent(
    client: openai.AsyncOpenAI, standin: StandIn, receiver: Receiver
) -> None:
    assert standin.config.webhook_url is None
    await _settle(client, standin)
    assert (receiver.deliveries, standin.webhook_attempts()) == ([], [])


@pytest.mark.parametrize("refusal", [500, 404, 302])
async def test_a_non_2xx_answer_is_retried_with_the_same_webhook_id(
    client: openai.AsyncOpenAI, standin: StandIn, hooked: Receiver, refusal: int
) -> None:
    hooked.answers = [refusal]
    response_id = await _settle(client, standin)

    first, second = hooked.deliveries
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert hooked.response_ids(standin.webhook_secret) == [response_id, response_id]
    assert _tries(standin) == [(1, refusal, None), (2, 200, None)]
    # Each try is stamped (and signed) when it is made.
    stamps = [delivery.headers["webhook-timestamp"] for delivery in hooked.deliveries]
    assert stamps == [str(int(a["at"])) for a in standin.webhook_attempts()]


async def test_retries_stop_at_max_attempts(
    client: openai.AsyncOpenAI, standin: StandIn, hooked: Receiver
) -> None:
    standin.update_config({"webhook_max_attempts": 3})
    hooked.answers = [503] * 10
    await _settle(client, standin)
    assert len(hooked.deliveries) == 3
    assert _tries(standin) == [(1, 503, None), (2, 503, None), (3, 503, None)]


async def test_a_connection_error_is_retried(client: openai.AsyncOpenAI, standin: StandIn) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    standin.update_config(
        {"webhook_url": f"http://127.0.0.1:{port}/hooks", "webhook_max_attempts": 2, **FAST_RETRIES}
    )
    await _settle(client, standin)
    assert _tries(standin) == [(1, None, None), (2, None, None)]


async def test_webhook_drop_sends_nothing_ever(
    client: openai.AsyncOpenAI, standin: StandIn, hooked: Receiver
) -> None:
    standin.add_faults([{"kind": "webhook_drop", "times": 1}])
    dropped = await _settle(client, standin)
    assert hooked.deliveries == []
    assert _tries(standin) == [(1, None, "webhook_drop")]

    delivered = await _settle(client, standin)
    assert hooked.response_ids(standin.webhook_secret) == [delivered]
    assert dropped != delivered


async def test_webhook_rules_match_on_event_type_and_response_id(
    client: openai.AsyncOpenAI, standin: StandIn, hooked: Receiver
) -> None:
    standin.add_faults(
        [
            {"kind": "webhook_drop", "event_type": "response.failed"},
            {"kind": "webhook_drop", "response_id": "resp_another"},
        ]
    )
    completed = await _settle(client, standin)
    await _settle(client, standin, "[[outcome:failed]]")
    assert hooked.response_ids(standin.webhook_secret) == [completed]
    assert [a["fault"] for a in standin.webhook_attempts()] == [None, "webhook_drop"]


async def test_webhook_duplicate_sends_the_event_twice_under_one_id(
    client: openai.AsyncOpenAI, standin: StandIn, hooked: Receiver
) -> None:
    standin.add_faults([{"kind": "webhook_duplicate", "times": 1}])
    response_id = await _settle(client, standin)
    first, second = hooked.deliveries
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert hooked.response_ids(standin.webhook_secret) == [response_id, response_id]
    assert _tries(standin) == [(1, 200, None), (2, 200, "webhook_duplicate")]


async def test_webhook_reorder_holds_an_event_until_the_next_one_is_sent(
    client: openai.AsyncOpenAI, standin: StandIn, hooked: Receiver
) -> None:
    standin.add_faults([{"kind": "webhook_reorder", "times": 1}])
    earlier = await _settle(client, standin)
    assert hooked.deliveries == []

    later = await _settle(client, standin)
    assert hooked.response_ids(standin.webhook_secret) == [later, earlier]
    faults = {a["response_id"]: a["fault"] for a in standin.webhook_attempts()}
    assert faults == {later: None, earlier: "webhook_reorder"}


async def test_webhook_missign_is_refused_then_the_retry_verifies(
    client: openai.AsyncOpenAI, standin: StandIn, hooked: Receiver
) -> None:
    hooked.verify_secret = standin.webhook_secret
    standin.add_faults([{"kind": "webhook_missign", "times": 1}])
    response_id = await _settle(client, standin)

    forged, honest = hooked.deliveries
    with pytest.raises(openai.InvalidWebhookSignatureError):
        _unwrap(forged, standin.webhook_secret)
    assert _unwrap(honest, standin.webhook_secret).data.id == response_id
    assert forged.headers["webhook-id"] == honest.headers["webhook-id"]
    assert _tries(standin) == [(1, 400, "webhook_missign"), (2, 200, None)]


async def test_webhook_delay_holds_the_first_try_back(
    client: openai.AsyncOpenAI, standin: StandIn, hooked: Receiver
) -> None:
    standin.add_faults([{"kind": "webhook_delay", "delay_s": 0.2, "times": 1}])
    response_id = await _settle(client, standin)
    assert hooked.response_ids(standin.webhook_secret) == [response_id]
    (attempt,) = standin.webhook_attempts()
    assert attempt["fault"] == "webhook_delay"
    ended_at = standin.state.responses[response_id].ended_at
    assert ended_at is not None
    assert attempt["at"] - ended_at >= 0.2


async def test_webhook_rules_never_touch_api_requests(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    standin.add_faults([{"kind": "webhook_drop"}, {"kind": "webhook_missign"}])
    await client.beta.threads.create()
    assert [entry["fault"] for entry in standin.journal] == [None]


def test_request_rules_never_touch_webhooks() -> None:
    faults = FaultInjector(seed=0)
    faults.add([{"kind": "status", "status": 500}, {"kind": "drop"}])
    assert faults.pick_for_event("response.completed", "resp_x") is None
    assert faults.pick("GET", "/v1/threads/x") is not None


async def test_webhooks_are_configured_at_run_time_over_http(
    client: openai.AsyncOpenAI, standin: StandIn, receiver: Receiver, http: RawHttp
) -> None:
    secret = new_webhook_secret()
    changes = {"webhook_url": receiver.url, "webhook_secret": secret, **FAST_RETRIES}
    updated = await http.post("/_standin/config", changes)
    assert updated.status == 200
    assert (await http.get("/_standin/config")).body["webhook_url"] == receiver.url
    assert standin.webhook_secret == secret

    response_id = await _settle(client, standin)
    assert receiver.response_ids(secret) == [response_id]
    (attempt,) = (await http.get("/_standin/webhooks")).body["attempts"]
    assert (attempt["response_id"], attempt["status"]) == (response_id, 200)


@pytest.mark.parametrize("secret", ["whsec_not base64!", "c2VjcmV0bm9wcmVmaXg=", "whsec_===="])
async def test_a_malformed_secret_is_400_and_never_quoted(
    http: RawHttp, standin: StandIn, secret: str
) -> None:
    before = standin.webhook_secret
    reply = await http.post("/_standin/config", {"webhook_secret": secret})
    assert reply.status == 400
    assert secret not in reply.body["error"]["message"]
    assert standin.webhook_secret == before


@pytest.mark.parametrize(
    "bad",
    [
        {"webhook_max_attempts": 0},
        {"webhook_url": "ftp://example.com/hooks"},
        {"webhook_retry_base_ms": -1},
        {"webhook_retry_cap_ms": "fast"},
    ],
)
async def test_bad_webhook_settings_are_400(
    http: RawHttp, standin: StandIn, bad: Mapping[str, Any]
) -> None:
    before = standin.config
    assert (await http.post("/_standin/config", bad)).status == 400
    assert standin.config == before


@pytest.mark.parametrize(
    "rule",
    [
        {"kind": "webhook_explode"},
        {"kind": "webhook_delay"},
        {"kind": "webhook_drop", "path": "/v1"},
        {"kind": "webhook_drop", "status": 500},
        {"kind": "webhook_drop", "event_type": "response.done"},
        {"kind": "status", "status": 500, "event_type": "response.completed"},
    ],
)
async def test_invalid_webhook_rules_are_400_and_add_nothing(
    http: RawHttp, standin: StandIn, rule: dict[str, Any]
) -> None:
    reply = await http.post("/_standin/faults", {"rules": [{"kind": "webhook_drop"}, rule]})
    assert reply.status == 400
    assert standin.fault_rules == []


async def test_the_control_api_lists_every_fault_kind(http: RawHttp) -> None:
    kinds = (await http.get("/_standin/faults/kinds")).body["kinds"]
    assert (
        set(kinds)
        == set(FAULT_KINDS)
        == {
            "status",
            "slow",
            "drop",
            "drop_after",
            "webhook_delay",
            "webhook_drop",
            "webhook_duplicate",
            "webhook_reorder",
            "webhook_missign",
        }
    )
    assert all(isinstance(description, str) and description for description in kinds.values())


async def test_reset_forgets_pending_retries_and_attempts(
    client: openai.AsyncOpenAI, standin: StandIn, hooked: Receiver
) -> None:
    standin.update_config({"webhook_retry_base_ms": 60_000})
    hooked.answers = [500]
    response_id = await _start(client)
    await wait_until(standin, response_id)
    await wait_for(lambda: bool(standin.webhook_attempts()), "the first webhook try")
    standin.reset()
    await standin.webhooks_idle()
    assert (len(hooked.deliveries), standin.webhook_attempts()) == (1, [])
