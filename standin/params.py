"""Validation of JSON request bodies.

The real API rejects malformed parameters with a 400 naming the parameter; doing
the same keeps client bugs visible instead of surfacing later as odd state.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from standin.errors import bad_request

Json = dict[str, Any]

_METADATA_MAX_KEYS = 16
_METADATA_MAX_KEY_CHARS = 64
_METADATA_MAX_VALUE_CHARS = 512


async def read_json(request: web.Request) -> Json:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise bad_request("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def opt_str(body: Json, key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"Invalid type for '{key}': expected a string.", param=key)
    return value


def req_str(body: Json, key: str) -> str:
    value = opt_str(body, key)
    if value is None:
        raise bad_request(f"Missing required parameter: '{key}'.", param=key)
    return value


def opt_bool(body: Json, key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"Invalid type for '{key}': expected a boolean.", param=key)
    return value


def opt_list(body: Json, key: str) -> list[Any] | None:
    value = body.get(key)
    if value is not None and not isinstance(value, list):
        raise bad_request(f"Invalid type for '{key}': expected an array.", param=key)
    return value


def opt_dict(body: Json, key: str) -> Json | None:
    value = body.get(key)
    if value is not None and not isinstance(value, dict):
        raise bad_request(f"Invalid type for '{key}': expected an object.", param=key)
    return value


def metadata(body: Json, key: str = "metadata") -> dict[str, str]:
    value = opt_dict(body, key)
    if value is None:
        return {}
    if len(value) > _METADATA_MAX_KEYS:
        raise bad_request(f"'{key}' may hold at most {_METADATA_MAX_KEYS} pairs.", param=key)
    for name, item in value.items():
        if len(name) > _METADATA_MAX_KEY_CHARS:
            raise bad_request(f"'{key}' keys are limited to 64 characters.", param=key)
        if not isinstance(item, str) or len(item) > _METADATA_MAX_VALUE_CHARS:
            raise bad_request(f"'{key}' values must be strings of at most 512 chars.", param=key)
    return dict(value)


def reject_streaming(body: Json) -> None:
    if body.get("stream"):
        raise bad_request("The stand-in does not support streaming.", param="stream")
