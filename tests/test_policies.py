"""Retry and poll schedules, and secret scrubbing in logs."""

from __future__ import annotations

import httpx2
import openai
import pytest

from worker.logging import SecretScrubber
from worker.polling import PollSchedule
from worker.retry import RetryPolicy, is_transient, retry_after_s


def _status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://x/v1/threads")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    return openai.APIStatusError("boom", response=response, body=None)


@pytest.mark.parametrize(
    ("status", "transient"),
    [(400, False), (404, False), (408, True), (409, True), (429, True), (500, True), (503, True)],
)
def test_status_classification(status: int, transient: bool) -> None:
    assert is_transient(_status_error(status)) is transient


def test_retry_after_headers_are_read() -> None:
    assert retry_after_s(_status_error(429, {"retry-after-ms": "1500"})) == 1.5
    assert retry_after_s(_status_error(429, {"retry-after": "2"})) == 2.0
    assert retry_after_s(_status_error(429, {"retry-after": "soon"})) is None


def test_backoff_grows_is_capped_and_honours_the_server() -> None:
    policy = RetryPolicy(attempts=10, base_s=0.5, cap_s=4.0, jitter=0.0)
    assert [policy.delay_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.delay_s(1, hint_s=3.0) == 3.0
    assert policy.delay_s(1, hint_s=60.0) == 4.0


def test_jitter_stays_within_bounds() -> None:
    policy = RetryPolicy(attempts=3, base_s=1.0, cap_s=10.0, jitter=0.25)
    delays = {policy.delay_s(1) for _ in range(200)}
    assert all(0.75 <= d <= 1.0 for d in delays)
    assert len(delays) > 1


def test_poll_schedule_starts_fast_and_respects_the_hint() -> None:
    schedule = PollSchedule(initial_ms=100, max_ms=1000, growth=2.0, jitter=0.0)
    assert [schedule.delay_s(n) for n in range(5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert schedule.delay_s(0, server_hint_ms=500) == 0.5
    assert schedule.delay_s(0, server_hint_ms=5000) == 1.0


def test_scrubber_removes_secrets_from_strings_and_exceptions() -> None:
    scrub = SecretScrubber(["sk-live-secret", "hunter2"])
    event = scrub(
        None,
        "error",
        {
            "event": "connect_failed",
            "dsn": "postgresql://app:hunter2@db/aw",
            "error": ValueError("bad key sk-live-secret"),
        },
    )
    assert "hunter2" not in str(event)
    assert "sk-live-secret" not in str(event)
    assert event["dsn"] == "postgresql://app:***@db/aw"
