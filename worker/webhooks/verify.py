"""Verifying OpenAI's webhook deliveries (Standard Webhooks signatures) with the SDK's unwrap.

A delivery is accepted when it carries the three signed headers, was sent within five minutes,
is signed with the current secret or, while one is being rotated, the previous one, and tells
that a response ended. Anything else is refused, naming why; nothing here touches the database,
so refusing a flood of forged deliveries costs an HMAC each.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import openai
from openai.types.webhooks import (
    ResponseCancelledWebhookEvent,
    ResponseCompletedWebhookEvent,
    ResponseFailedWebhookEvent,
    ResponseIncompleteWebhookEvent,
)

from worker.settings import InvalidSettings, Settings

WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE = (
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
)
# What the SDK tolerates too: a delivery further off is a replay or a clock gone wrong.
TOLERANCE_S = 300
_SECRET_PREFIX = "whsec_"  # noqa: S105 - how every OpenAI secret begins, not one
# unwrap needs a client, and a client needs a credential; the receiver never calls the API.
_NO_API_KEY = "unused-the-webhook-receiver-never-calls-the-api"

ResponseEndedEvent = (
    ResponseCompletedWebhookEvent
    | ResponseFailedWebhookEvent
    | ResponseCancelledWebhookEvent
    | ResponseIncompleteWebhookEvent
)
_RESPONSE_ENDED = (
    ResponseCompletedWebhookEvent,
    ResponseFailedWebhookEvent,
    ResponseCancelledWebhookEvent,
    ResponseIncompleteWebhookEvent,
)


class Refusal(StrEnum):
    """Why a delivery was refused: the outcome label of the deliveries metric."""

    MISSING_SIGNATURE = "missing_signature"
    BAD_SIGNATURE = "bad_signature"
    STALE_TIMESTAMP = "stale_timestamp"
    UNKNOWN_TYPE = "unknown_type"
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"

    @property
    def status(self) -> int:
        """401 when the sender is not known to be OpenAI, 400 for what OpenAI signed or sent."""
        unauthenticated = (Refusal.MISSING_SIGNATURE, Refusal.BAD_SIGNATURE)
        return 401 if self in unauthenticated else 400


class Refused(Exception):
    """A delivery refused with no effect; `refusal` says why."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.value)
        self.refusal = refusal


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    """A delivery's Standard Webhooks headers: present and recent, the signature not checked."""

    webhook_id: str
    timestamp: str
    signature: str

    def as_mapping(self) -> dict[str, str]:
        return {
            WEBHOOK_ID: self.webhook_id,
            WEBHOOK_TIMESTAMP: self.timestamp,
            WEBHOOK_SIGNATURE: self.signature,
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    """A verified delivery: a response's ending, and the webhook-id it is deduplicated on."""

    webhook_id: str
    event: ResponseEndedEvent

    @property
    def event_type(self) -> str:
        return self.event.type

    @property
    def response_id(self) -> str:
        return self.event.data.id


def signed_headers(headers: Mapping[str, str]) -> SignedHeaders:
    """The signed headers, read before the body is. The timestamp is checked here, not left to
    the SDK, which refuses a stale delivery as it refuses a forged one."""
    webhook_id, timestamp, signature = (
        headers.get(name, "") for name in (WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE)
    )
    if not (webhook_id and timestamp and signature):
        raise Refused(Refusal.MISSING_SIGNATURE)
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise Refused(Refusal.MALFORMED) from None
    if abs(int(time.time()) - sent_at) > TOLERANCE_S:
        raise Refused(Refusal.STALE_TIMESTAMP)
    return SignedHeaders(webhook_id, timestamp, signature)


class Verifier:
    """Checks deliveries against the current signing secret, then the previous one if any.

    OpenAI signs with one secret at a time; during a rotation the deliveries already on their
    way (and their retries) are signed with the previous one.
    """

    def __init__(self, secret: str, previous: str = "") -> None:
        self._secrets = [s for s in (secret, previous) if s]
        self._client = openai.OpenAI(api_key=_NO_API_KEY, max_retries=0)

    def verify(self, body: bytes, headers: SignedHeaders) -> Delivery:
        """The delivery `body` and `headers` make, or Refused saying why not."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(Refusal.MALFORMED) from None
        event = self._unwrapped(text, headers.as_mapping())
        return Delivery(headers.webhook_id, _response_ended(event))

    def close(self) -> None:
        self._client.close()

    def _unwrapped(self, body: str, headers: dict[str, str]) -> object:
        for secret in self._secrets:
            try:
                return self._client.webhooks.unwrap(body, headers, secret=secret)
            except openai.InvalidWebhookSignatureError:
                continue
            except ValueError:  # signed, so from OpenAI, but not JSON
                raise Refused(Refusal.MALFORMED) from None
        raise Refused(Refusal.BAD_SIGNATURE)


def _response_ended(event: object) -> ResponseEndedEvent:
    # unwrap builds the event without validating it: another type comes back as another event
    # class (an unknown one as the first of them), a JSON string or array as itself.
    if not isinstance(event, _RESPONSE_ENDED):
        known = isinstance(getattr(event, "type", None), str)
        raise Refused(Refusal.UNKNOWN_TYPE if known else Refusal.MALFORMED)
    response_id: object = getattr(event.data, "id", None)
    if not isinstance(response_id, str) or not response_id:
        raise Refused(Refusal.MALFORMED)
    return event


def verifier_of(settings: Settings) -> Verifier:
    """The verifier for the configured secrets; InvalidSettings names the variable that is unset
    or holds no usable secret, never its value."""
    secret = settings.openai_webhook_secret.get_secret_value()
    previous = settings.webhook_secret_previous.get_secret_value()
    if not secret:
        raise InvalidSettings("no webhook secret: set AW_WEBHOOK_SECRET or OPENAI_WEBHOOK_SECRET")
    _check_secret(secret, "AW_WEBHOOK_SECRET (or OPENAI_WEBHOOK_SECRET)")
    _check_secret(previous, "AW_WEBHOOK_SECRET_PREVIOUS")
    return Verifier(secret, previous)


def _check_secret(secret: str, variable: str) -> None:
    """Refuses a whsec_ secret that does not decode as the SDK decodes it; the SDK would raise
    on every delivery. Any other secret the SDK takes as it is."""
    if not secret.startswith(_SECRET_PREFIX):
        return
    try:
        key = base64.b64decode(secret.removeprefix(_SECRET_PREFIX))
    except binascii.Error:
        key = b""
    if not key:
        raise InvalidSettings(f"invalid setting {variable}: not base64 after whsec_")
