"""Domain errors. Each one tells the consumer or the conversation loop what to do next."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import asyncpg
from aiormq.exceptions import AMQPConnectionError


class ReasonCode(StrEnum):
    """Why an event was dead-lettered; travels in the `x-aw-reason` header."""

    MALFORMED_JSON = "malformed_json"
    SCHEMA_INVALID = "schema_invalid"
    MESSAGE_ID_MISMATCH = "message_id_mismatch"
    OPENAI_REJECTED = "openai_rejected"
    OPENAI_UNAVAILABLE = "openai_unavailable"


class InvalidEvent(Exception):
    """The delivery is not a usable user_message.v1; it can never succeed as it is."""

    def __init__(self, reason: ReasonCode, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class LeaseLost(Exception):
    """Another worker took over the conversation; this one must stop touching it."""


class PermanentApiError(Exception):
    """The model API refused the request for a reason a retry cannot fix (4xx)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ApiUnavailable(Exception):
    """The model API kept failing transiently until the retry budget ran out."""

    def __init__(self, message: str, first_failure_at: datetime) -> None:
        super().__init__(message)
        self.first_failure_at = first_failure_at


class ThreadBusy(Exception):
    """The thread or conversation has an operation in progress that is not ours."""

    def __init__(self, active_run_id: str | None) -> None:
        super().__init__(f"thread busy with run {active_run_id}")
        self.active_run_id = active_run_id


def is_dependency_failure(exc: BaseException) -> bool:
    """Postgres or RabbitMQ is unreachable or restarting: wait it out; not the event's fault."""
    return isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.CannotConnectNowError
        | asyncpg.TooManyConnectionsError
        | AMQPConnectionError
        | ConnectionError
        | OSError
        | TimeoutError,
    )
