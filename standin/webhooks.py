"""Webhooks: signed POSTs to ``webhook_url`` when a background response ends.

As OpenAI does, each event is sent as ``{"object": "event", "id": "evt_...", "type":
"response.<status>", "created_at": <when the response ended>, "data": {"id": "resp_..."}}``
for the statuses completed, failed, cancelled and incomplete, with the Standard Webhooks
headers:

- ``webhook-id``: one per event, the same on every retry and duplicate of it, so a
  receiver deduplicates on it;
- ``webhook-timestamp``: the unix seconds of each try;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>`` keyed with
  the base64-decoded part of ``webhook_secret`` after ``whsec_``.

A non-2xx answer (a redirect included: it is not followed) or a connection error is retried
with exponential backoff and jitter. OpenAI keeps trying for 72 hours; the stand-in tries
``webhook_max_attempts`` times. Events are queued as responses settle and sent from
background tasks, one per event, so neither the API nor other events wait for a slow or
failing receiver.

Webhook fault rules (standin.faults, matched once per event when it is queued):

- ``webhook_delay``: the first try waits ``delay_s``;
- ``webhook_drop``: nothing is ever sent, no retry either (one attempt is recorded, with
  status None);
- ``webhook_duplicate``: once a try is answered 2xx, one more copy is sent, same webhook-id
  and body; its answer ends it;
- ``webhook_reorder``: held back until an event queued after it has had its first try, then
  sent (an event nothing follows is never sent);
- ``webhook_missign``: the first try is signed with a random key, so a receiver must refuse
  it; the retries that refusal brings are signed rightly.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from standin.config import WHSEC_PREFIX, LiveConfig, new_webhook_secret
from standin.faults import FaultInjector, FaultRule
from standin.models import new_id, seconds
from standin.response_models import ResponseRecord

logger = logging.getLogger(__name__)

# OpenAI does not document its delivery timeout; a hung receiver must not stall stop().
_TRY_TIMEOUT_S = 10.0
_USER_AGENT = "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)"
_DEFAULT_IDLE_TIMEOUT_S = 5.0
# Past this many doublings any sensible cap is reached, and 2.0 ** n would overflow by ~1024.
_MAX_DOUBLINGS = 32


@dataclass(frozen=True)
class WebhookEvent:
    """One event, as every try of it sends it: the body never changes between tries."""

    event_id: str
    webhook_id: str
    type: str
    response_id: str
    body: bytes

    @classmethod
    def for_response(cls, record: ResponseRecord) -> WebhookEvent:
        event_id = new_id("evt")
        event_type = f"response.{record.status}"
        payload = {
            "object": "event",
            "id": event_id,
            "type": event_type,
            "created_at": seconds(record.ended_at),
            "data": {"id": record.id},
        }
        return cls(
            event_id=event_id,
            webhook_id=new_id("wh"),
            type=event_type,
            response_id=record.id,
            body=json.dumps(payload, separators=(",", ":")).encode(),
        )


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one try, Standard Webhooks style."""
    key = base64.b64decode(secret.removeprefix(WHSEC_PREFIX))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@dataclass(frozen=True)
class _Delivery:
    """A queued event with where it goes and the fault that fired for it."""

    seq: int
    event: WebhookEvent
    url: str
    fault: FaultRule | None

    @property
    def fault_kind(self) -> str | None:
        return self.fault.kind if self.fault else None


class WebhookSender:
    """Queues an event per settled background response and delivers it with retries.

    ``attempts()`` records every try (and every drop) for tests: ``{event_id, webhook_id,
    type, response_id, attempt, status, fault, at}``, ``status`` being the HTTP status or
    None when nothing came back.
    """

    def __init__(self, config: LiveConfig, faults: FaultInjector) -> None:
        self._config = config
        self._faults = faults
        self._queue: asyncio.Queue[_Delivery] = asyncio.Queue()
        self._session: aiohttp.ClientSession | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._held: list[_Delivery] = []
        self._attempts: list[dict[str, Any]] = []
        self._seq = 0

    def start(self) -> None:
        """Begin sending; needs the running event loop the stand-in serves on."""
        timeout = aiohttp.ClientTimeout(total=_TRY_TIMEOUT_S)
        # A fresh queue: one made on an earlier start belongs to that start's event loop.
        self._queue = asyncio.Queue()
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    async def stop(self) -> None:
        """Give up on every event not yet delivered and close the HTTP session."""
        tasks = [*self._deliveries, *([self._dispatcher] if self._dispatcher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._dispatcher = None
        self._discard_pending()
        if self._session is not None:
            await self._session.close()
        self._session = None

    def reset(self) -> None:
        """Forget pending events and the attempts recorded; keep sending new ones."""
        for task in self._deliveries:
            task.cancel()
        self._discard_pending()
        self._attempts.clear()

    def notify(self, record: ResponseRecord) -> None:
        """The response engine's settle hook: queue an event if ``record`` ran in the
        background and webhooks are on."""
        url = self._config.current.webhook_url
        if not record.background or url is None or self._session is None:
            return
        event = WebhookEvent.for_response(record)
        fault = self._faults.pick_for_event(event.type, event.response_id)
        self._seq += 1
        self._queue.put_nowait(_Delivery(self._seq, event, url, fault))

    def attempts(self) -> list[dict[str, Any]]:
        return [dict(attempt) for attempt in self._attempts]

    async def idle(self, timeout_s: float = _DEFAULT_IDLE_TIMEOUT_S) -> None:
        """Wait until every queued event is delivered or given up on, events held back by
        ``webhook_reorder`` excepted; ``TimeoutError`` after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while True:
                await self._queue.join()
                if not self._deliveries:
                    return
                await asyncio.wait(set(self._deliveries))

    def _discard_pending(self) -> None:
        self._held.clear()
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()

    async def _dispatch(self) -> None:
        while True:
            delivery = await self._queue.get()
            if delivery.fault_kind == "webhook_reorder":
                self._held.append(delivery)
            else:
                self._spawn(delivery)
            self._queue.task_done()

    def _spawn(self, delivery: _Delivery) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(delivery))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    def _release_held(self, seq: int) -> None:
        """Send the events held back for an event queued before the one numbered ``seq``."""
        released = [held for held in self._held if held.seq < seq]
        self._held = [held for held in self._held if held.seq >= seq]
        for delivery in released:
            self._spawn(delivery)

    async def _deliver(self, delivery: _Delivery) -> None:
        kind = delivery.fault_kind
        if delivery.fault is not None and kind == "webhook_delay":
            await asyncio.sleep(delivery.fault.delay_s)
        if kind == "webhook_drop":
            self._record(delivery, attempt=1, at=time.time(), status=None, fault=kind)
            return
        first_fault = kind if kind != "webhook_duplicate" else None
        tries, status = await self._send_with_retries(delivery, first_fault)
        if kind == "webhook_duplicate" and _is_success(status):
            await self._try(delivery, tries + 1, fault=kind)

    async def _send_with_retries(
        self, delivery: _Delivery, first_fault: str | None
    ) -> tuple[int, int | None]:
        """Try until a 2xx or the last attempt allowed; the number of tries and last status."""
        attempt = 1
        status = await self._try(delivery, attempt, fault=first_fault)
        while not _is_success(status) and attempt < self._config.current.webhook_max_attempts:
            await asyncio.sleep(self._backoff_s(attempt))
            attempt += 1
            status = await self._try(delivery, attempt, fault=None)
        if not _is_success(status):
            logger.info("webhook %s: gave up after %d attempts", delivery.event.webhook_id, attempt)
        return attempt, status

    def _backoff_s(self, failed_attempts: int) -> float:
        """Exponential, capped, with "equal jitter": half the step fixed, half random, so
        events that failed together do not all retry at the same instant."""
        config = self._config.current
        doublings = min(failed_attempts - 1, _MAX_DOUBLINGS)
        doubled_ms = config.webhook_retry_base_ms * 2.0**doublings
        step_ms = min(config.webhook_retry_cap_ms, doubled_ms)
        return (step_ms / 2 + random.uniform(0, step_ms / 2)) / 1000

    async def _try(self, delivery: _Delivery, attempt: int, fault: str | None) -> int | None:
        at = time.time()
        headers = self._headers(delivery.event, int(at), honest=fault != "webhook_missign")
        status = await self._post(delivery.url, delivery.event.body, headers)
        self._record(delivery, attempt=attempt, at=at, status=status, fault=fault)
        return status

    def _headers(self, event: WebhookEvent, timestamp: int, honest: bool) -> dict[str, str]:
        secret = self._config.current.webhook_secret
        if not honest:
            secret = new_webhook_secret()
        return {
            "content-type": "application/json",
            "user-agent": _USER_AGENT,
            "webhook-id": event.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secret, event.webhook_id, timestamp, event.body),
        }

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int | None:
        if self._session is None:
            return None
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    def _record(
        self, delivery: _Delivery, *, attempt: int, at: float, status: int | None, fault: str | None
    ) -> None:
        event = delivery.event
        self._attempts.append(
            {
                "event_id": event.event_id,
                "webhook_id": event.webhook_id,
                "type": event.type,
                "response_id": event.response_id,
                "attempt": attempt,
                "status": status,
                "fault": fault,
                "at": at,
            }
        )
        if attempt == 1:
            self._release_held(delivery.seq)


def _is_success(status: int | None) -> bool:
    return status is not None and 200 <= status < 300
