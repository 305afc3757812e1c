"""HTTP tools against a real server on 127.0.0.1: what it receives (body, granted context,
a signature its own check and the openai SDK's accept), and what becomes of its answers,
failures and silences (retried only for an idempotent tool, with the same webhook-id)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from tests.ports import free_port
from worker.relay.http_tools import (
    ANSWER_MAX_BYTES,
    USER_AGENT,
    HttpTool,
    ToolFailed,
    sign,
    tool_session,
    verify,
    webhook_id,
)
from worker.toolkit import ToolAuthor, ToolContext, TurnEvent

WHSEC = "whsec_" + base64.b64encode(b"a key of at least twenty-four bytes").decode()
PLAIN = "a plain shared secret"
CUSTOMER_TEXT = "my card number is 4111"


@dataclass(frozen=True, slots=True)
class Answer:
    """What the server answers one request with."""

    status: int = 200
    body: bytes = b'{"output": "done"}'
    delay_s: float = 0.0
    chunked: bool = False
    drop: bool = False  # close the connection instead of answering
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Received:
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ToolServer:
    """A tool's endpoint: records every request, answers each from the script in turn (the
    last answer again once the script runs out)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: list[Answer] = [Answer()]
        self.url = ""
        app = web.Application()
        app.router.add_post("/tool", self._handle)
        # A client that gave up cancels its handler, so a slow answer does not hold teardown.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)

    def answers(self, *script: Answer) -> None:
        self.script = list(script)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/tool"

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.received.append(Received(dict(request.headers), await request.read()))
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if answer.drop:
            assert request.transport is not None
            request.transport.close()
        await asyncio.sleep(answer.delay_s)
        if not answer.chunked:
            return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        response = web.StreamResponse(status=answer.status)
        response.enable_chunked_encoding()
        await response.prepare(request)
        half = len(answer.body) // 2
        await response.write(answer.body[:half])
        await response.write(answer.body[half:])
        await response.write_eof()
        return response


@pytest.fixture
async def server() -> AsyncIterator[ToolServer]:
    tool_server = ToolServer()
    await tool_server.start()
    yield tool_server
    await tool_server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    shared = tool_session()
    yield shared
    await shared.close()


@pytest.fixture
async def sdk() -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(api_key="x", webhook_secret=WHSEC)
    yield client
    await client.close()


def context(**granted: Any) -> ToolContext:
    return ToolContext(
        conversation_id="conv-1", profile="support", call_id="call_abc", tool="lookup", **granted
    )


def http_tool(
    server: ToolServer,
    session: aiohttp.ClientSession,
    *,
    idempotent: bool = False,
    secret: str = WHSEC,
    timeout_s: float = 2.0,
) -> HttpTool:
    return HttpTool(
        name="lookup",
        url=server.url,
        secret=secret,
        timeout_s=timeout_s,
        idempotent=idempotent,
        client=session,
    )


# --- what the server receives -------------------------------------------------------------------


async def test_the_server_receives_the_call_and_only_the_context_parts_granted(
    server: ToolServer, session: aiohttp.ClientSession
) -> None:
    tool = http_tool(server, session)
    granted = context(
        events=(TurnEvent("ev-1", CUSTOMER_TEXT, datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)),),
        author=ToolAuthor("agent-7", "Ann"),
        metadata={"inbox": "sales"},
    )

    assert await tool({"order_id": "A1"}, context()) == "done"
    assert await tool({"order_id": "A2"}, granted) == "done"

    bare, full = (received.json() for received in server.received)
    assert bare == {
        "type": "tool_call",
        "tool": "lookup",
        "call_id": "call_abc",
        "arguments": {"order_id": "A1"},
        "context": {
            "conversation_id": "conv-1",
            "profile": "support",
            "call_id": "call_abc",
            "tool": "lookup",
        },
    }
    assert full["arguments"] == {"order_id": "A2"}
    assert full["context"] == {
        **bare["context"],
        "events": [
            {"event_id": "ev-1", "text": CUSTOMER_TEXT, "occurred_at": "2025-01-02T03:04:05+00:00"}
        ],
        "author": {"id": "agent-7", "name": "Ann"},
        "metadata": {"inbox": "sales"},
    }
    headers = server.received[0].headers
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == USER_AGENT
    assert headers["webhook-id"] == webhook_id(context())


@pytest.mark.parametrize("secret", [WHSEC, PLAIN], ids=["whsec", "plain"])
async def test_the_signature_is_accepted_by_our_check_and_the_sdks(
    server: ToolServer, session: aiohttp.ClientSession, sdk: openai.AsyncOpenAI, secret: str
) -> None:
    await http_tool(server, session, secret=secret)({}, context())
    [received] = server.received

    assert verify(secret, received.headers, received.body)
    sdk.webhooks.verify_signature(received.body, received.headers, secret=secret)


async def test_a_wrong_secret_or_a_changed_body_is_rejected_by_both(
    server: ToolServer, session: aiohttp.ClientSession, sdk: openai.AsyncOpenAI
) -> None:
    await http_tool(server, session, secret=PLAIN)({}, context())
    [received] = server.received
    changed = received.body.replace(b'"arguments":{}', b'"arguments":{"x":1}')
    assert changed != received.body

    for secret, body in [(WHSEC, received.body), (PLAIN, changed)]:
        assert not verify(secret, received.headers, body)
        with pytest.raises(openai.InvalidWebhookSignatureError):
            sdk.webhooks.verify_signature(body, received.headers, secret=secret)


def test_sign_agrees_with_the_sdk_and_verify_refuses_a_stale_timestamp(
    sdk: openai.AsyncOpenAI,
) -> None:
    body = b'{"type":"tool_call"}'
    now = int(time.time())
    fresh = {"webhook-id": "msg_1", "webhook-timestamp": str(now)}
    fresh["webhook-signature"] = sign(WHSEC, "msg_1", now, body)
    stale = {**fresh, "webhook-timestamp": str(now - 301)}
    stale["webhook-signature"] = sign(WHSEC, "msg_1", now - 301, body)

    sdk.webhooks.verify_signature(body, fresh, secret=WHSEC)
    assert verify(WHSEC, fresh, body)
    assert not verify(WHSEC, stale, body)
    # A rotating sender signs with two secrets; either one verifies.
    rotated = {
        **fresh,
        "webhook-signature": f"{sign(PLAIN, 'msg_1', now, body)} {fresh['webhook-signature']}",
    }
    assert verify(WHSEC, rotated, body)


def test_a_malformed_whsec_secret_is_refused_without_being_quoted() -> None:
    with pytest.raises(ValueError, match="base64") as raised:
        HttpTool(name="t", url="http://x", secret="whsec_!!!", timeout_s=1, idempotent=False)
    assert "!!!" not in str(raised.value)


def test_the_budget_covers_every_try_and_wait() -> None:
    once, thrice = (
        HttpTool(name="t", url="http://x", secret=PLAIN, timeout_s=2, idempotent=idempotent)
        for idempotent in (False, True)
    )

    assert (once.tries, once.budget_s) == (1, 2)
    assert thrice.tries == 3
    assert thrice.budget_s >= 3 * 2 + 2 * 0.1


# --- answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "output"),
    [
        (b'{"output": "3 parcels"}', "3 parcels"),
        (b'{"status": "shipped"}', '{"status": "shipped"}'),
        (b'{"output": 3}', '{"output": 3}'),
        (b"plain words", "plain words"),
    ],
)
async def test_a_2xx_answer_is_its_output_string_or_else_its_text(
    server: ToolServer, session: aiohttp.ClientSession, body: bytes, output: str
) -> None:
    server.answers(Answer(body=body))

    assert await http_tool(server, session)({}, context()) == output


@pytest.mark.parametrize(
    ("chunked", "size"),
    [(False, f"{ANSWER_MAX_BYTES + 1} bytes"), (True, f"more than {ANSWER_MAX_BYTES} bytes")],
    ids=["content-length", "chunked"],
)
async def test_an_oversized_answer_fails(
    server: ToolServer, session: aiohttp.ClientSession, chunked: bool, size: str
) -> None:
    server.answers(Answer(body=b"x" * (ANSWER_MAX_BYTES + 1), chunked=chunked))

    with pytest.raises(ToolFailed) as raised:
        await http_tool(server, session, idempotent=True)({}, context())
    assert raised.value.reason == f"answer too large: {size}, at most {ANSWER_MAX_BYTES}"
    assert len(server.received) == 1


async def test_an_answer_of_exactly_the_limit_is_returned(
    server: ToolServer, session: aiohttp.ClientSession
) -> None:
    server.answers(Answer(body=b"x" * ANSWER_MAX_BYTES, chunked=True))

    assert len(await http_tool(server, session)({}, context())) == ANSWER_MAX_BYTES


async def test_a_500_fails_naming_the_status_and_not_the_body_or_arguments(
    server: ToolServer, session: aiohttp.ClientSession
) -> None:
    server.answers(Answer(status=500, body=b"stack trace with " + CUSTOMER_TEXT.encode()))

    with pytest.raises(ToolFailed, match="status 500") as raised:
        await http_tool(server, session)({"note": CUSTOMER_TEXT}, context())
    assert CUSTOMER_TEXT not in str(raised.value)


async def test_a_redirect_is_a_failure_not_followed(
    server: ToolServer, session: aiohttp.ClientSession
) -> None:
    server.answers(Answer(status=307, headers={"location": server.url}))

    with pytest.raises(ToolFailed, match="status 307"):
        await http_tool(server, session, idempotent=True)({}, context())
    assert len(server.received) == 1


# --- retries ------------------------------------------------------------------------------------


async def test_an_idempotent_tool_is_retried_on_503_with_the_same_webhook_id(
    server: ToolServer, session: aiohttp.ClientSession
) -> None:
    server.answers(Answer(status=503, headers={"retry-after": "0"}), Answer())

    assert await http_tool(server, session, idempotent=True)({}, context()) == "done"
    first, second = server.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert verify(WHSEC, second.headers, second.body)


async def test_an_idempotent_tool_gives_up_after_its_attempts(
    server: ToolServer, session: aiohttp.ClientSession
) -> None:
    server.answers(Answer(status=429))

    with pytest.raises(ToolFailed, match="status 429"):
        await http_tool(server, session, idempotent=True)({}, context())
    assert len(server.received) == 3


async def test_a_tool_not_idempotent_is_tried_once_on_503(
    server: ToolServer, session: aiohttp.ClientSession
) -> None:
    server.answers(Answer(status=503), Answer())

    with pytest.raises(ToolFailed, match="status 503"):
        await http_tool(server, session)({}, context())
    assert len(server.received) == 1


async def test_a_4xx_is_not_retried_even_for_an_idempotent_tool(
    server: ToolServer, session: aiohttp.ClientSession
) -> None:
    server.answers(Answer(status=404), Answer())

    with pytest.raises(ToolFailed, match="status 404"):
        await http_tool(server, session, idempotent=True)({}, context())
    assert len(server.received) == 1


async def test_a_timeout_fails_and_a_tool_not_idempotent_posts_once(
    server: ToolServer, session: aiohttp.ClientSession
) -> None:
    server.answers(Answer(delay_s=5.0), Answer())

    with pytest.raises(ToolFailed, match=r"no answer within 0\.2 s"):
        await http_tool(server, session, timeout_s=0.2)({}, context())
    assert len(server.received) == 1


async def test_an_idempotent_tool_is_retried_after_a_timeout(
    server: ToolServer, session: aiohttp.ClientSession
) -> None:
    server.answers(Answer(delay_s=5.0), Answer())

    assert await http_tool(server, session, idempotent=True, timeout_s=0.2)({}, context()) == (
        "done"
    )
    first, second = server.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


async def test_a_refused_connection_fails_naming_its_kind(
    session: aiohttp.ClientSession,
) -> None:
    tool = HttpTool(
        name="lookup",
        url=f"http://127.0.0.1:{free_port()}/tool",
        secret=PLAIN,
        timeout_s=1.0,
        idempotent=False,
        client=session,
    )

    with pytest.raises(ToolFailed, match="request failed: ClientConnectorError"):
        await tool({}, context())


@pytest.mark.parametrize(("idempotent", "requests"), [(False, 1), (True, 2)])
async def test_a_dropped_connection_is_retried_only_for_an_idempotent_tool(
    server: ToolServer, session: aiohttp.ClientSession, idempotent: bool, requests: int
) -> None:
    server.answers(Answer(drop=True, delay_s=5.0), Answer())

    if idempotent:
        assert await http_tool(server, session, idempotent=True)({}, context()) == "done"
    else:
        with pytest.raises(ToolFailed, match="request failed: ServerDisconnectedError"):
            await http_tool(server, session)({}, context())
    assert len(server.received) == requests


async def test_a_tool_without_a_session_opens_one_and_closes_it(server: ToolServer) -> None:
    tool = HttpTool(name="lookup", url=server.url, secret=PLAIN, timeout_s=2, idempotent=False)
    try:
        assert await tool({}, context()) == "done"
        await tool.aclose()
        assert await tool({}, context()) == "done"  # a new session after the close
    finally:
        await tool.aclose()
