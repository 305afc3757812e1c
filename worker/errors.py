"""Domain errors. Each one tells the consumer or the conversation loop what to do next."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path


class ReasonCode(StrEnum):
    """Why an event was dead-lettered; travels in the `x-aw-reason` header."""

    MALFORMED_JSON = "malformed_json"
    SCHEMA_INVALID = "schema_invalid"
    MESSAGE_ID_MISMATCH = "message_id_mismatch"
    ATTACHMENT_INVALID = "attachment_invalid"
    # A field this conversation's backend cannot honour (refused rather than dropped).
    FIELD_UNSUPPORTED = "field_unsupported"
    OPENAI_REJECTED = "openai_rejected"
    OPENAI_UNAVAILABLE = "openai_unavailable"
    # Nothing else covers it (a bug, data the checks let through): tried a bounded number of
    # times, then dead-lettered so the conversation moves on.
    INTERNAL_ERROR = "internal_error"


class WorkerError(Exception):
    """The root of every error the worker raises on purpose.

    The boundaries (backends, store, consumer) translate what the SDK and the drivers raise into
    these, so the core decides what to do next from the worker's own types alone.
    """


class InvalidEvent(WorkerError):
    """The delivery is not a usable user_message.v1; it can never succeed as it is."""

    def __init__(self, reason: ReasonCode, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class LeaseLost(WorkerError):
    """Another worker took over the conversation; this one must stop touching it."""


# --- the model API ------------------------------------------------------------------------------


class ApiError(WorkerError):
    """A request to the model API failed; `label` is its outcome for metrics (status or kind)."""

    def __init__(self, detail: str, label: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.label = label


class ApiTransient(ApiError):
    """Worth another try: a timeout, a dropped connection, 408, 409, 429 or a 5xx."""

    def __init__(self, detail: str, label: str, retry_after_s: float | None = None) -> None:
        super().__init__(detail, label)
        self.retry_after_s = retry_after_s


class PermanentApiError(ApiError):
    """The model API refused the request for a reason a retry cannot fix (4xx)."""

    def __init__(self, code: str, message: str, label: str = "rejected") -> None:
        super().__init__(f"{code}: {message}", label)
        self.code = code
        self.message = message


class ThreadBusy(ApiError):
    """The thread or conversation has an operation in progress that is not ours."""

    def __init__(self, active_run_id: str | None, label: str = "400") -> None:
        super().__init__(f"thread busy with run {active_run_id}", label)
        self.active_run_id = active_run_id


class RunAlreadyEnded(PermanentApiError):
    """A cancel reached a run that can no longer be cancelled (it ended, or is ending)."""


class ApiUnavailable(ApiError):
    """The model API kept failing transiently until the retry budget ran out."""

    def __init__(self, message: str, first_failure_at: datetime) -> None:
        super().__init__(message, "unavailable")
        self.first_failure_at = first_failure_at


# --- Postgres and RabbitMQ ----------------------------------------------------------------------


class DependencyUnavailable(WorkerError):
    """Postgres or RabbitMQ is unreachable or restarting: wait it out; not the event's fault."""


class StoreUnavailable(DependencyUnavailable):
    """Postgres: refused, dropped, restarting, or out of connections."""


class BrokerUnavailable(DependencyUnavailable):
    """RabbitMQ: the connection or channel is gone."""


def error_class(exc: BaseException) -> str:
    """The exception's class, qualified unless built in: what an operator searches for."""
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def origin(exc: BaseException, frames: int = 3) -> str:
    """Where it was raised, innermost last (file:line function): no message, so no values.

    An exception's message may quote what it choked on, which can be customer text.
    """
    tb = exc.__traceback__
    steps: list[str] = []
    while tb is not None:
        code = tb.tb_frame.f_code
        steps.append(f"{Path(code.co_filename).name}:{tb.tb_lineno} {code.co_name}")
        tb = tb.tb_next
    return " < ".join(reversed(steps[-frames:]))


def is_dependency_failure(exc: BaseException) -> bool:
    """Postgres or RabbitMQ is unreachable or restarting: wait it out; not the event's fault.

    The boundaries translate their drivers' errors into DependencyUnavailable; a bare socket
    error or timeout says the same wherever it comes from.
    """
    return isinstance(exc, DependencyUnavailable | ConnectionError | OSError | TimeoutError)
