"""OpenAI-shaped errors.

The SDK picks its exception class from the HTTP status and reads ``message``,
``type``, ``param`` and ``code`` from the ``error`` object, so every failure the
stand-in reports goes through :class:`ApiError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(kind: str, object_id: str) -> ApiError:
    return ApiError(404, f"No {kind} found with id '{object_id}'.")


# The wordings below are the API's own, as its 400s show them; ``param`` is the
# full path of the offending field (``input[0].content[1].detail``).


def missing_parameter(param: str) -> ApiError:
    return bad_request(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def unknown_parameter(param: str) -> ApiError:
    return bad_request(f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter")


def invalid_type(param: str, expected: str, value: object) -> ApiError:
    return bad_request(
        f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def invalid_value(value: object, supported: Sequence[str], param: str) -> ApiError:
    return bad_request(
        f"Invalid value: '{value}'. Supported values are: {_quoted(supported)}.",
        param=param,
        code="invalid_value",
    )


def invalid_format(param: str, expected: str) -> ApiError:
    return bad_request(
        f"Invalid '{param}'. Expected {expected}, but got a value with an invalid format.",
        param=param,
        code="invalid_value",
    )


def string_too_long(param: str, maximum: int, length: int) -> ApiError:
    return bad_request(
        f"Invalid '{param}': string too long. Expected a string with maximum length {maximum}, "
        f"but got a string with length {length} instead.",
        param=param,
        code="string_above_max_length",
    )


def files_not_found(file_ids: Sequence[str]) -> ApiError:
    """File ids a request names but the account does not hold (never uploaded, or deleted).

    Worded as measured on Azure OpenAI's Responses API: one 400 lists every missing
    id and names no ``param``. OpenAI's own wording is unmeasured.
    """
    listed = ", ".join(file_ids)
    return bad_request(f"Files [{listed}] were not found due to ownership verification failure.")


# bool before int: True is an int to isinstance.
_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a decimal"),
    (str, "a string"),
    (list, "an array"),
)


def json_type(value: object) -> str:
    """The JSON type of a decoded value, as the API's ``invalid_type`` errors name it."""
    if value is None:
        return "null"
    for kind, name in _JSON_TYPES:
        if isinstance(value, kind):
            return name
    return "an object"


def _quoted(values: Sequence[str]) -> str:
    quoted = [f"'{value}'" for value in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def default_error_type(status: int) -> str:
    """The ``type`` the real API uses for a status, for injected and routing errors."""
    if status == 429:
        return "requests"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"
