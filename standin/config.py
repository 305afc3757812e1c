"""Configuration of the OpenAI stand-in.

The config is immutable so a handler never sees a half-applied update; run-time
changes (``POST /_standin/config``) swap in a new object through ``LiveConfig``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import secrets
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

WHSEC_PREFIX = "whsec_"


def new_webhook_secret() -> str:
    """A signing secret in the form the OpenAI dashboard hands out: ``whsec_<base64>``."""
    return WHSEC_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class StandInConfig:
    """Timing and behaviour knobs; every duration carries its unit in the name.

    ``webhook_url`` turns webhooks on: each background response that ends is posted
    there, signed with ``webhook_secret`` (fresh per config unless given) and retried
    on a non-2xx answer with exponential backoff from ``webhook_retry_base_ms``,
    capped at ``webhook_retry_cap_ms``, for ``webhook_max_attempts`` tries in all.
    """

    queue_ms: int = 20
    run_duration_ms: int = 200
    cancel_ms: int = 20
    poll_after_ms: int | None = 500
    seed: int = 0
    auto_assistants: bool = True
    default_model: str = "gpt-4o-mini"
    run_expires_after_s: int = 600
    webhook_url: str | None = None
    # Kept out of repr so a logged config does not carry the key.
    webhook_secret: str = field(default_factory=new_webhook_secret, repr=False)
    webhook_retry_base_ms: int = 500
    webhook_retry_cap_ms: int = 60_000
    webhook_max_attempts: int = 8

    def __post_init__(self) -> None:
        durations = (
            "queue_ms",
            "run_duration_ms",
            "cancel_ms",
            "run_expires_after_s",
            "webhook_retry_base_ms",
            "webhook_retry_cap_ms",
        )
        for name in durations:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.poll_after_ms is not None and self.poll_after_ms < 0:
            raise ValueError("poll_after_ms must be >= 0 or null")
        _check_webhook_fields(self)

    def updated(self, changes: Mapping[str, Any]) -> StandInConfig:
        """Return a copy with ``changes`` applied; values are type-checked because
        they usually come from JSON."""
        hints = typing.get_type_hints(StandInConfig)
        for name, value in changes.items():
            if name not in hints:
                raise ValueError(f"unknown config field {name!r}")
            if not _matches(value, hints[name]):
                raise ValueError(f"config field {name!r} must be {hints[name]}, got {value!r}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_webhook_fields(config: StandInConfig) -> None:
    url = config.webhook_url
    if url is not None and not url.startswith(("http://", "https://")):
        raise ValueError("webhook_url must be an http(s) URL or null")
    if config.webhook_max_attempts < 1:
        raise ValueError("webhook_max_attempts must be >= 1")
    # The message never quotes the secret, even a malformed one.
    if not _is_webhook_secret(config.webhook_secret):
        raise ValueError("webhook_secret must be 'whsec_' followed by non-empty base64")


def _is_webhook_secret(secret: str) -> bool:
    if not secret.startswith(WHSEC_PREFIX):
        return False
    try:
        key = base64.b64decode(secret.removeprefix(WHSEC_PREFIX), validate=True)
    except binascii.Error:
        return False
    return bool(key)


def _matches(value: object, hint: object) -> bool:
    if isinstance(hint, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    # JSON booleans are ints in Python; an int field must not accept true/false.
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(hint, type) and isinstance(value, hint)


class LiveConfig:
    """Shared pointer to the current config, so components see run-time updates."""

    def __init__(self, config: StandInConfig) -> None:
        self.current = config
