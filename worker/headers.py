"""AMQP header values as JSON, for intake (which stores them with a delivery) and the dead-letter
tools (which show, export and re-publish them)."""

from __future__ import annotations

import datetime
import decimal
from typing import Any


def json_safe(value: Any) -> Any:
    """AMQP header values as JSON, so they can be stored and re-published unchanged in meaning.

    Postgres' jsonb takes no NUL and no lone surrogate, and neither does UTF-8: such characters
    are escaped, so a header can never make a delivery impossible to store.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        return storable(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {storable(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def storable(text: str) -> str:
    """`text` with NUL and lone surrogates escaped, so jsonb and UTF-8 can both hold it."""
    if "\x00" in text:
        text = text.replace("\x00", "\\u0000")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text
