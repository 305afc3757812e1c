"""Small aiohttp helpers shared by the API modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from standin.config import LiveConfig
from standin.errors import ApiError

# Ids a handler learned (e.g. the id of the run it created) for the journal entry.
JOURNAL_IDS: web.RequestKey[dict[str, str]] = web.RequestKey("journal_ids")


def json_response(
    body: Mapping[str, Any], *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def error_response(error: ApiError, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response(error.body(), status=error.status, headers=headers)


def note_ids(request: web.Request, **ids: str) -> None:
    request[JOURNAL_IDS].update(ids)


def poll_headers(config: LiveConfig, active: bool) -> dict[str, str]:
    """``openai-poll-after-ms`` tells the SDK's poll helpers how long to wait."""
    poll_after_ms = config.current.poll_after_ms
    if not active or not poll_after_ms:
        return {}
    return {"openai-poll-after-ms": str(poll_after_ms)}
