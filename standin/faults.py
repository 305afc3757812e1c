"""Fault injection rules for ``/v1`` requests and for the webhooks the stand-in sends.

Rules are tried in order and the first one that fires wins. A rule fires on
every match, on its first ``times`` matches, or with probability ``rate`` drawn
from a seeded generator so a faulty benchmark run can be replayed exactly.
``after`` lets that many matches through untouched first (fault the second POST).

Request rules match on ``method`` and ``path`` (a regular expression). Webhook rules
(``webhook_*``) match each event once, when it is queued, on ``event_type`` (e.g.
``response.completed``; any when absent) and ``response_id`` (any when absent).
``FAULT_KINDS`` says what each kind does; ``GET /_standin/faults/kinds`` lists it.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from standin.errors import ApiError, default_error_type

FaultKind = Literal[
    "status",
    "slow",
    "drop",
    "drop_after",
    "webhook_delay",
    "webhook_drop",
    "webhook_duplicate",
    "webhook_reorder",
    "webhook_missign",
]
FAULT_KINDS: dict[FaultKind, str] = {
    "status": "answer with the HTTP error `status` (429 adds Retry-After from `retry_after_s`)",
    "slow": "wait `delay_s` before handling the request",
    "drop": "close the connection before handling the request",
    "drop_after": "handle the request, then close the connection instead of answering",
    "webhook_delay": "wait `delay_s` before the event's first delivery",
    "webhook_drop": "never send the event, not even a retry: lost for good",
    "webhook_duplicate": "once delivered (2xx), send the event again with the same webhook-id",
    "webhook_reorder": "hold the event back until a later event has been sent, then send it",
    "webhook_missign": "sign the first delivery with a wrong key; retries are signed rightly",
}
_KINDS: tuple[FaultKind, ...] = tuple(FAULT_KINDS)
WEBHOOK_EVENT_TYPES = frozenset(
    {"response.completed", "response.failed", "response.cancelled", "response.incomplete"}
)
_REQUEST_FIELDS = frozenset({"method", "path", "status", "retry_after_s", "message"})
_WEBHOOK_FIELDS = frozenset({"event_type", "response_id"})
_FIELDS = _REQUEST_FIELDS | _WEBHOOK_FIELDS | {"kind", "delay_s", "times", "after", "rate"}


@dataclass
class FaultRule:
    kind: FaultKind
    method: str | None = None
    path: re.Pattern[str] | None = None
    status: int = 500
    retry_after_s: float | None = None
    delay_s: float = 0.0
    # Remaining firings; None means unlimited.
    times: int | None = None
    # Matches still to let through before the rule may fire.
    after: int = 0
    rate: float | None = None
    message: str | None = None
    # Webhook rules only: the event type and response they apply to (None: any).
    event_type: str | None = None
    response_id: str | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FaultRule:
        unknown = set(raw) - _FIELDS
        if unknown:
            raise ValueError(f"unknown fault rule fields: {sorted(unknown)}")
        kind = _kind(raw.get("kind"))
        _check_fields_fit(kind, raw)
        rule = cls(
            kind=kind,
            method=_opt_str(raw, "method"),
            path=_pattern(raw.get("path")),
            status=_opt_int(raw, "status") or 500,
            retry_after_s=_number(raw, "retry_after_s"),
            delay_s=_number(raw, "delay_s") or 0.0,
            times=_opt_int(raw, "times"),
            after=_opt_int(raw, "after") or 0,
            rate=_number(raw, "rate"),
            message=_opt_str(raw, "message"),
            event_type=_opt_str(raw, "event_type"),
            response_id=_opt_str(raw, "response_id"),
        )
        rule._validate()
        return rule

    @property
    def for_webhooks(self) -> bool:
        return _is_webhook_kind(self.kind)

    def _validate(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be >= 1")
        if self.after < 0:
            raise ValueError("after must be >= 0")
        if self.rate is not None and not 0 <= self.rate <= 1:
            raise ValueError("rate must be between 0 and 1")
        if self.kind in ("slow", "webhook_delay") and self.delay_s <= 0:
            raise ValueError(f"a {self.kind} rule needs delay_s > 0")
        if self.event_type is not None and self.event_type not in WEBHOOK_EVENT_TYPES:
            raise ValueError(f"event_type must be one of {sorted(WEBHOOK_EVENT_TYPES)}")

    def matches(self, method: str, path: str) -> bool:
        if self.for_webhooks:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or self.path.search(path) is not None

    def matches_event(self, event_type: str, response_id: str) -> bool:
        if not self.for_webhooks:
            return False
        if self.event_type is not None and self.event_type != event_type:
            return False
        return self.response_id is None or self.response_id == response_id

    def error(self) -> ApiError:
        if self.status == 429:
            message = self.message or "Rate limit reached for requests (injected by the stand-in)."
            code: str | None = "rate_limit_exceeded"
        else:
            message = self.message or f"Injected fault: HTTP {self.status}."
            code = None
        return ApiError(self.status, message, error_type=default_error_type(self.status), code=code)

    def headers(self) -> dict[str, str]:
        if self.status != 429:
            return {}
        if self.retry_after_s is None:
            return {"Retry-After": "1"}
        return {
            "Retry-After": str(max(1, math.ceil(self.retry_after_s))),
            "retry-after-ms": str(round(self.retry_after_s * 1000)),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "method": self.method,
            "path": self.path.pattern if self.path else None,
            "status": self.status,
            "retry_after_s": self.retry_after_s,
            "delay_s": self.delay_s,
            "times": self.times,
            "after": self.after,
            "rate": self.rate,
            "message": self.message,
            "event_type": self.event_type,
            "response_id": self.response_id,
        }


class FaultInjector:
    def __init__(self, seed: int) -> None:
        self._rules: list[FaultRule] = []
        self._random = random.Random(seed)

    @property
    def rules(self) -> list[FaultRule]:
        return list(self._rules)

    def add(self, raw_rules: Iterable[Mapping[str, Any]]) -> None:
        # Parse every rule before adding any, so a bad batch changes nothing.
        self._rules.extend([FaultRule.from_json(raw) for raw in raw_rules])

    def clear(self) -> None:
        self._rules.clear()

    def reseed(self, seed: int) -> None:
        self._random = random.Random(seed)

    def pick(self, method: str, path: str) -> FaultRule | None:
        """The request rule that fires for this request, if any."""
        return self._first_firing(lambda rule: rule.matches(method, path))

    def pick_for_event(self, event_type: str, response_id: str) -> FaultRule | None:
        """The webhook rule that fires for this event, if any."""
        return self._first_firing(lambda rule: rule.matches_event(event_type, response_id))

    def _first_firing(self, matches: Callable[[FaultRule], bool]) -> FaultRule | None:
        for rule in self._rules:
            if not matches(rule):
                continue
            if rule.after:
                rule.after -= 1
                continue
            if rule.rate is not None and self._random.random() >= rule.rate:
                continue
            if rule.times is not None:
                rule.times -= 1
                if rule.times == 0:
                    self._rules.remove(rule)
            return rule
        return None


def _kind(value: object) -> FaultKind:
    for kind in _KINDS:
        if value == kind:
            return kind
    raise ValueError(f"kind must be one of {list(_KINDS)}, got {value!r}")


def _check_fields_fit(kind: FaultKind, raw: Mapping[str, Any]) -> None:
    """A request field on a webhook rule (or the reverse) would be silently ignored."""
    for_webhooks = _is_webhook_kind(kind)
    misplaced = set(raw) & (_REQUEST_FIELDS if for_webhooks else _WEBHOOK_FIELDS)
    if misplaced:
        rules = "request" if for_webhooks else "webhook_*"
        raise ValueError(f"fields {sorted(misplaced)} apply only to {rules} rules")


def _is_webhook_kind(kind: FaultKind) -> bool:
    return kind.startswith("webhook_")


def _opt_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def _opt_int(raw: Mapping[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{key} must be an integer")
    return value


def _number(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{key} must be a non-negative number")
    return float(value)


def _pattern(value: object) -> re.Pattern[str] | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("path must be a regular expression string")
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"path is not a valid regular expression: {exc}") from None
