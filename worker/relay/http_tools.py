"""HTTP tools: a function call POSTed, signed, to the URL a profile names.

The request follows Standard Webhooks (https://www.standardwebhooks.com/): the body is JSON,
and the headers carry `webhook-id`, `webhook-timestamp` and `webhook-signature`
(``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``). A tool's server verifies it with
`verify` below, any Standard Webhooks library, or the openai SDK's
``client.webhooks.verify_signature``.

The webhook ID is derived from the conversation and the call, so every try of one call, and a
call run again after a crash, carries the same ID: the server can use it as an idempotency key.
Only a tool declared idempotent is tried more than once; for the others a timed-out POST may
have been applied, and is not repeated.

Failures raise `ToolFailed`, whose message names the status or the kind of failure and never
the request's arguments or the answer's body (either may hold customer text).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import aiohttp
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from worker import tracing
from worker.relay.retry import Backoff
from worker.toolkit import ToolContext

ANSWER_MAX_BYTES = 64 * 1024
_SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of the form, not a secret
# Short waits: the model is waiting on the call, and the customer on the model.
_BACKOFF_BASE_S, _BACKOFF_CAP_S = 0.1, 1.0
_RETRIED_STATUSES = frozenset({429})  # and every 5xx

log = structlog.get_logger("worker.relay.http_tools")


class ToolFailed(Exception):
    """An HTTP tool's call failed; the message names the tool and the status or the kind of
    failure, never the arguments or the answer's body."""

    def __init__(
        self,
        tool: str,
        reason: str,
        *,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"HTTP tool {tool!r}: {reason}")
        self.tool = tool
        self.reason = reason
        # A try of an idempotent tool that failed this way is worth another.
        self.retryable = retryable
        self.retry_after_s = retry_after_s


# --- signing ------------------------------------------------------------------------------------


def signing_key(secret: str) -> bytes:
    """The HMAC key a secret stands for.

    ``whsec_<base64>`` (the Standard Webhooks form) is the base64-decoded part; any other
    string is its UTF-8 bytes. Raises ValueError for bad base64 or an empty key (the message
    does not quote the secret).
    """
    if secret.startswith(_SECRET_PREFIX):
        try:
            key = base64.b64decode(secret.removeprefix(_SECRET_PREFIX), validate=True)
        except binascii.Error:
            raise ValueError("a whsec_ secret must be base64 after its prefix") from None
    else:
        key = secret.encode()
    if not key:
        raise ValueError("the signing secret is empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header for this body: ``v1,<base64 HMAC-SHA256>``."""
    return f"v1,{_signature(signing_key(secret), msg_id, timestamp, body)}"


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, tolerance_s: int = 300) -> bool:
    """Whether `body` with these headers was signed with `secret`, less than `tolerance_s`
    ago (or ahead): what a tool's server checks before it acts on a call.

    `body` must be the raw bytes received, not JSON parsed and serialized again. Any of the
    space-separated ``v1,`` signatures may match (a sender rotating its secret sends two).
    A malformed secret raises ValueError, as in `signing_key`.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "").split()
    if not msg_id or not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    expected = _signature(signing_key(secret), msg_id, int(timestamp), body).encode()
    return any(
        hmac.compare_digest(expected, candidate.removeprefix("v1,").encode())
        for candidate in signatures
        if candidate.startswith("v1,")
    )


def webhook_id(context: ToolContext) -> str:
    """The same for every try of one call. Hashed, since a call ID is the model API's and the
    spec wants no `.` in an ID; the conversation is in it so that calls of two conversations
    never share one."""
    digest = hashlib.sha256(f"{context.conversation_id}\x00{context.call_id}".encode())
    return f"msg_{digest.hexdigest()[:32]}"


# --- the client ---------------------------------------------------------------------------------


def _package_version() -> str:
    try:
        return version("assistant-worker")
    except PackageNotFoundError:
        return "unknown"


USER_AGENT = f"assistant-worker/{_package_version()}"


def tool_session() -> aiohttp.ClientSession:
    """A session for HTTP tools, to share between them (one per process or per worker).

    No cookie jar: a call must not depend on what an earlier one was answered. With tracing on,
    each request is a CLIENT span (worker/tracing.py).
    """
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), trace_configs=tracing.http_trace_configs()
    )


class HttpTool:
    """A tool served by a URL: a ToolHandler that POSTs the call and its context there.

    `secret` is ``whsec_<base64>`` (its decoded bytes are the key) or any other string (its
    UTF-8 bytes are). `timeout_s` bounds each try; a tool declared `idempotent` is tried up to
    `attempts` times on a timeout, a connection failure, 429 or a 5xx, any other tool once.

    `client` is a session to share (see `tool_session`), which the caller closes; without one
    the tool opens its own on first use, and `aclose` closes it.
    """

    def __init__(
        self,
        *,
        name: str,
        url: str,
        secret: str,
        timeout_s: float,
        idempotent: bool,
        attempts: int = 3,
        client: aiohttp.ClientSession | None = None,
    ) -> None:
        if attempts < 1 or timeout_s <= 0:
            raise ValueError(f"HTTP tool {name!r}: attempts must be >= 1 and timeout_s > 0")
        self.name = name
        self.url = url
        self.timeout_s = timeout_s
        self.idempotent = idempotent
        self._key = signing_key(secret)
        self._backoff = Backoff(attempts if idempotent else 1, _BACKOFF_BASE_S, _BACKOFF_CAP_S)
        self._client = client
        self._owns_client = client is None

    @property
    def tries(self) -> int:
        return self._backoff.attempts

    @property
    def budget_s(self) -> float:
        """The longest a call can take, every try and wait included: a caller that bounds the
        call must allow this much, or it cuts the retries short."""
        return self.tries * self.timeout_s + (self.tries - 1) * _BACKOFF_CAP_S

    async def aclose(self) -> None:
        """Closes the session the tool opened itself (not one it was given)."""
        if self._owns_client and self._client is not None:
            await self._client.close()
            self._client = None

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> str:
        body = self._body(arguments, context)
        msg_id = webhook_id(context)
        async for attempt in self._retrying():
            with attempt:
                return await self._try(msg_id, body)
        raise AssertionError("unreachable: tenacity either returns or reraises")

    def _body(self, arguments: dict[str, Any], context: ToolContext) -> bytes:
        doc = {
            "type": "tool_call",
            "tool": self.name,
            "call_id": context.call_id,
            "arguments": arguments,
            "context": context.as_json(),
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self.tries),
            wait=self._wait_s,
            retry=retry_if_exception(lambda exc: isinstance(exc, ToolFailed) and exc.retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )

    def _wait_s(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = self._backoff.delay_s(state.attempt_number)
        hint = exc.retry_after_s if isinstance(exc, ToolFailed) else None
        # The server's Retry-After wins when it asks longer, within the cap.
        return backoff if hint is None else min(max(backoff, hint), self._backoff.cap_s)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = exc.reason if isinstance(exc, ToolFailed) else type(exc).__name__
        log.warning("http_tool_retry", tool=self.name, attempt=state.attempt_number, reason=reason)

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = tool_session()
        return self._client

    def _headers(self, msg_id: str, body: bytes) -> dict[str, str]:
        # Signed anew for every try: the timestamp is the try's, the ID the call's.
        timestamp = int(time.time())
        return {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": f"v1,{_signature(self._key, msg_id, timestamp, body)}",
        }

    async def _try(self, msg_id: str, body: bytes) -> str:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._post(msg_id, body)
        except TimeoutError:
            raise ToolFailed(
                self.name, f"no answer within {self.timeout_s:g} s", retryable=True
            ) from None
        except aiohttp.ClientError as exc:
            # The class only: an aiohttp message may quote the URL, which may carry a token.
            raise ToolFailed(
                self.name, f"request failed: {type(exc).__name__}", retryable=True
            ) from None

    async def _post(self, msg_id: str, body: bytes) -> str:
        # Redirects are not followed: Standard Webhooks counts a 3xx as a failure.
        async with self._session().post(
            self.url, data=body, headers=self._headers(msg_id, body), allow_redirects=False
        ) as response:
            if not 200 <= response.status < 300:
                raise self._status_failure(response)
            return _output(await self._read_bounded(response))

    def _status_failure(self, response: aiohttp.ClientResponse) -> ToolFailed:
        status = response.status
        return ToolFailed(
            self.name,
            f"status {status}",
            retryable=status in _RETRIED_STATUSES or status >= 500,
            retry_after_s=_retry_after_s(response.headers.get("retry-after")),
        )

    async def _read_bounded(self, response: aiohttp.ClientResponse) -> str:
        declared = response.content_length
        if declared is not None and declared > ANSWER_MAX_BYTES:
            raise self._too_large(f"{declared} bytes")
        answer = bytearray()
        async for chunk in response.content.iter_chunked(ANSWER_MAX_BYTES):
            answer += chunk
            if len(answer) > ANSWER_MAX_BYTES:
                raise self._too_large(f"more than {ANSWER_MAX_BYTES} bytes")
        # JSON is UTF-8 (RFC 8259), and so is what a tool has to say to the model.
        return answer.decode(errors="replace")

    def _too_large(self, size: str) -> ToolFailed:
        return ToolFailed(self.name, f"answer too large: {size}, at most {ANSWER_MAX_BYTES}")


def _output(text: str) -> str:
    """The answer's `output` when it is JSON with a string there; else the answer as it is."""
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    if isinstance(doc, dict) and isinstance(doc.get("output"), str):
        output: str = doc["output"]
        return output
    return text


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After in seconds; its HTTP-date form is ignored (the wait is capped anyway)."""
    return float(value) if value is not None and value.strip().isdigit() else None
