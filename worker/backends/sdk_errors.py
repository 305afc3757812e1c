"""The boundary with the OpenAI SDK's exceptions: each one becomes one of the worker's ApiErrors.

Backends and Files wrap every method in `sdk_boundary`, so what leaves worker/backends/ is a
`worker.errors.ApiError`: transient (with the server's retry-after), rejected, or one a backend
named more precisely (thread busy, run already ended). The relay decides from those alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import openai
from opentelemetry.trace import SpanKind

from worker import tracing
from worker.backends import genai
from worker.backends.response_wire import MALFORMED
from worker.errors import ApiError, ApiTransient, PermanentApiError

P = ParamSpec("P")
T = TypeVar("T")

_TRANSIENT_STATUS = frozenset({408, 409, 429})


def sdk_boundary(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Runs `method`, raising the worker's error for whatever the SDK raises (cause kept);
    with tracing on, in a span of the GenAI conventions (worker/backends/genai.py)."""

    @functools.wraps(method)
    async def translating(*args: P.args, **kwargs: P.kwargs) -> T:
        if tracing.enabled() and not tracing.left_out():
            return await _traced(method, args, kwargs)
        try:
            return await method(*args, **kwargs)
        except openai.OpenAIError as exc:
            raise translate(exc) from exc

    return translating


async def _traced(
    method: Callable[..., Coroutine[Any, Any, T]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    name, attributes = genai.request(method.__name__, args)
    with tracing.span(name, attributes, kind=SpanKind.CLIENT) as span:
        try:
            result = await method(*args, **kwargs)
        except openai.OpenAIError as exc:
            # The span names its label (status code, timeout, ...), never the server's message.
            raise translate(exc) from exc
        tracing.set_attributes(span, genai.response(result))
        return result


def translate(exc: openai.OpenAIError) -> ApiError:
    """The worker's view of an SDK exception: transient or not, with a label for metrics."""
    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        label = "timeout" if isinstance(exc, openai.APITimeoutError) else "connection_error"
        return ApiTransient(describe(exc), label)
    if isinstance(exc, openai.APIStatusError):
        return _status_error(exc)
    # A body the SDK could not read as the type it expected: neither the server's verdict nor
    # a network blip, so not retried as one; labelled as the worker's own unreadable bodies are.
    if isinstance(exc, openai.APIResponseValidationError):
        return ApiError(describe(exc), MALFORMED)
    return ApiError(describe(exc), type(exc).__name__)


def rejected(exc: openai.APIStatusError) -> PermanentApiError:
    return PermanentApiError(error_code(exc), describe(exc), str(exc.status_code))


def error_code(exc: openai.APIStatusError) -> str:
    return exc.code or f"http_{exc.status_code}"


def describe(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.message}"
    if isinstance(exc, openai.APIConnectionError):
        # The SDK's transport reports a refused or dropped connection as "Request timed out";
        # what really happened is at the end of the cause chain.
        root = _root_cause(exc)
        if root is not exc:
            return f"{type(exc).__name__}: {type(root).__name__}: {str(root)[:200]}"
    return f"{type(exc).__name__}: {exc}"


def _status_error(exc: openai.APIStatusError) -> ApiError:
    status = exc.status_code
    if status in _TRANSIENT_STATUS or status >= 500:
        return ApiTransient(describe(exc), str(status), _retry_after_s(exc))
    return rejected(exc)


def _retry_after_s(exc: openai.APIStatusError) -> float | None:
    """The server's own wait hint (`retry-after-ms` or `Retry-After` seconds), if any."""
    headers = exc.response.headers
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        if "retry-after" in headers:
            return float(headers["retry-after"])
    except ValueError:
        return None
    return None


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc
