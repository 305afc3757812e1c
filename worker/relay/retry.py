"""Retries for transient model-API failures: one policy object decides, tenacity executes.

The SDK's own retries are switched off (max_retries=0): they would stack with these, and a POST
they repeat blindly can create a duplicate. Here every attempt of a creating call reconciles first.
What is transient is the backends' verdict (`ApiTransient`, see worker/backends/sdk_errors.py):
this module sees only the worker's own errors.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from worker.errors import ApiError, ApiTransient, ApiUnavailable
from worker.metrics import Metrics
from worker.relay.operations import ApiStatus, OpenAIOperation, api_status
from worker.settings import Settings

T = TypeVar("T")
log = structlog.get_logger("worker.relay.retry")


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, ApiTransient)


def retry_after_s(exc: BaseException) -> float | None:
    """The server's own wait hint, if it gave one."""
    return exc.retry_after_s if isinstance(exc, ApiTransient) else None


@dataclass(frozen=True, slots=True)
class Backoff:
    """How often to try something that failed for no known reason, and how long to wait."""

    attempts: int
    base_s: float
    cap_s: float
    jitter: float = 0.25

    def delay_s(self, failures: int) -> float:
        """The wait after the `failures`-th failure: doubling from `base_s`, capped, jittered."""
        delay: float = min(self.cap_s, self.base_s * 2.0 ** (failures - 1))
        return delay * (1 - self.jitter * random.random())


def internal_backoff(settings: Settings) -> Backoff:
    """AW_INTERNAL_*: for failures no other class covers, wherever they happen."""
    return Backoff(
        settings.internal_attempts,
        settings.internal_backoff_base_s,
        settings.internal_backoff_cap_s,
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with jitter; the server's Retry-After wins when it asks longer."""

    attempts: int
    base_s: float
    cap_s: float
    jitter: float = 0.25
    metrics: Metrics | None = field(default=None, compare=False)

    def delay_s(self, attempt: int, hint_s: float | None = None) -> float:
        backoff = Backoff(self.attempts, self.base_s, self.cap_s, self.jitter).delay_s(attempt)
        if hint_s is not None:
            return min(max(backoff, hint_s), self.cap_s)
        return backoff

    async def _counted(self, what: OpenAIOperation, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            result = await fn()
        except Exception as exc:
            self._count(what, api_status(exc))
            raise
        self._count(what, ApiStatus.OK)
        return result

    def _count(self, what: OpenAIOperation, status: ApiStatus) -> None:
        if self.metrics is not None:
            self.metrics.openai_requests.labels(what.value, status.value).inc()

    def _retrying(self, what: OpenAIOperation, failures: list[datetime]) -> AsyncRetrying:
        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "api_retry", call=what.value, attempt=state.attempt_number, error=_describe(exc)
            )
            if self.metrics is not None:
                self.metrics.openai_retries.labels(what.value).inc()

        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=retry_if_exception(is_transient),
            after=lambda _state: failures.append(datetime.now(UTC)),
            before_sleep=log_retry,
            reraise=True,
        )

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return self.delay_s(state.attempt_number, retry_after_s(exc) if exc else None)

    async def call(self, what: OpenAIOperation, fn: Callable[[], Awaitable[T]]) -> T:
        """Runs `fn` until it succeeds, fails permanently, or the attempts run out."""
        failures: list[datetime] = []
        try:
            async for attempt in self._retrying(what, failures):
                with attempt:
                    return await self._counted(what, fn)
        except ApiTransient as exc:
            raise _unavailable(what, exc, failures) from exc
        raise AssertionError("unreachable: tenacity either returns or reraises")


def _unavailable(what: OpenAIOperation, exc: ApiError, failures: list[datetime]) -> ApiUnavailable:
    first = failures[0] if failures else datetime.now(UTC)
    return ApiUnavailable(f"{what}: {exc.detail}", first)


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, ApiError):
        return exc.detail
    return f"{type(exc).__name__}: {exc}"
