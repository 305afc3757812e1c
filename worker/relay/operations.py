"""What the relay asks of the model API, and what came of it: the labels of
`assistant_worker_openai_requests{operation,status}` and `..._openai_retries{operation}`.

Both are closed sets, so the worker's metrics can start every series at zero (an alert's
`increase()` then sees the first 401 or 5xx). Each operation is one retried unit
(worker.relay.retry): a creating one includes the look for an earlier attempt's effect.
"""

from __future__ import annotations

import contextlib
from enum import StrEnum

from worker.errors import ApiError


class OpenAIOperation(StrEnum):
    """One call site's retried request; both backends make each but those noted. All are
    exported whatever AW_BACKEND says: every worker serves both backends (a conversation keeps
    the one it started on)."""

    CREATE_THREAD = "create_thread"
    RECORD_MESSAGES = "record_messages"
    START_RUN = "start_run"
    RETRIEVE_RUN = "retrieve_run"
    SUBMIT_TOOL_OUTPUTS = "submit_tool_outputs"
    CANCEL_RUN = "cancel_run"
    LIST_MESSAGES = "list_messages"
    # Assistants only (ListsRunSteps): the API's own tool calls, from the run's steps.
    LIST_RUN_STEPS = "list_run_steps"
    # Responses only (FindsTurnsByItems): the conversation's newest item.
    WATERMARK = "watermark"
    UPDATE_METADATA = "update_metadata"
    DELETE_THREAD = "delete_thread"
    # The Files API, the same for both backends.
    UPLOAD_FILE = "upload_file"
    RETRIEVE_FILE = "retrieve_file"
    DELETE_FILE = "delete_file"


class ApiStatus(StrEnum):
    """What one attempt came to. HTTP statuses the on-call tells apart keep their code; the
    rest fall into their class, so a server inventing a status adds no series."""

    OK = "ok"
    # Includes a thread or conversation busy with another run (waited out, not an error).
    BAD_REQUEST = "400"
    # The API key or project: every request fails alike until someone fixes the secret.
    UNAUTHORIZED = "401"
    FORBIDDEN = "403"
    NOT_FOUND = "404"
    RATE_LIMITED = "429"
    # Any other 4xx: 408 and 409 (retried), 413, 422, ...
    OTHER_4XX = "4xx"
    SERVER_ERROR = "5xx"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    # A body the worker cannot read (worker/backends/response_wire.py).
    MALFORMED_RESPONSE = "malformed_response"
    # Neither the API's answer nor the network: the worker's own exception around the call,
    # or an SDK error of no known kind (the api_retry log line and the error name it).
    OTHER = "other"


def api_status(exc: BaseException) -> ApiStatus:
    """The status label of a failed attempt, from the ApiError's `label` (a status code or a
    kind, worker/backends/sdk_errors.py)."""
    if not isinstance(exc, ApiError):
        return ApiStatus.OTHER
    if exc.label.isdigit():
        return _http_status(int(exc.label))
    with contextlib.suppress(ValueError):
        return ApiStatus(exc.label)
    return ApiStatus.OTHER


def _http_status(code: int) -> ApiStatus:
    with contextlib.suppress(ValueError):
        return ApiStatus(str(code))
    if 400 <= code < 500:
        return ApiStatus.OTHER_4XX
    if 500 <= code < 600:
        return ApiStatus.SERVER_ERROR
    return ApiStatus.OTHER
