"""Retry and poll schedules, and secret scrubbing in logs."""

from __future__ import annotations

import httpx2
import openai
import pytest

from worker.backends.sdk_errors import sdk_boundary, translate
from worker.errors import ApiError, ApiTransient, PermanentApiError
from worker.logging import SecretScrubber
from worker.relay.polling import PollPlan, PollSchedule, RunDurations
from worker.relay.retry import RetryPolicy, is_transient, retry_after_s


def _status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://x/v1/threads")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    return openai.APIStatusError("boom", response=response, body=None)


@pytest.mark.parametrize(
    ("status", "transient"),
    [(400, False), (404, False), (408, True), (409, True), (429, True), (500, True), (503, True)],
)
def test_status_classification(status: int, transient: bool) -> None:
    translated = translate(_status_error(status))
    assert is_transient(translated) is transient
    assert translated.label == str(status)
    if not transient:
        assert isinstance(translated, PermanentApiError)
        assert translated.code == f"http_{status}"


def test_retry_after_headers_are_read() -> None:
    assert retry_after_s(translate(_status_error(429, {"retry-after-ms": "1500"}))) == 1.5
    assert retry_after_s(translate(_status_error(429, {"retry-after": "2"}))) == 2.0
    assert retry_after_s(translate(_status_error(429, {"retry-after": "soon"}))) is None


def test_the_sdks_own_exceptions_are_not_classified_past_the_boundary() -> None:
    assert not is_transient(_status_error(503))
    assert retry_after_s(_status_error(429, {"retry-after": "2"})) is None


def test_connection_failures_are_transient_and_say_what_really_happened() -> None:
    request = httpx2.Request("POST", "http://x/v1/responses")
    refused = openai.APIConnectionError(request=request)
    refused.__cause__ = ConnectionRefusedError("[Errno 111] Connection refused")
    translated = translate(refused)
    assert isinstance(translated, ApiTransient)
    assert translated.label == "connection_error"
    assert "ConnectionRefusedError" in translated.detail
    assert translate(openai.APITimeoutError(request=request)).label == "timeout"


def test_an_sdk_error_that_is_neither_status_nor_network_is_not_retried() -> None:
    translated = translate(openai.OpenAIError("could not read the body"))
    assert type(translated) is ApiError
    assert not is_transient(translated)


async def test_the_boundary_raises_the_workers_error_and_keeps_the_sdks_as_cause() -> None:
    original = _status_error(400)

    @sdk_boundary
    async def refused() -> None:
        raise original

    with pytest.raises(PermanentApiError) as raised:
        await refused()
    assert raised.value.__cause__ is original
    assert raised.value.message == "HTTP 400: boom"


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


def _simulate(plan: PollPlan, run_length_s: float, server_hint_ms: int | None = None) -> float:
    """Polls a run that ends `run_length_s` after the plan's start; returns when it was seen."""
    now = 0.0
    while True:
        now += plan.next_delay_s(now, server_hint_ms)
        done = now >= run_length_s
        plan.looked(now, completed=done)
        if done:
            return now


SCHEDULE = PollSchedule(initial_ms=100, max_ms=2000, growth=1.5, jitter=0.0)


def test_until_enough_runs_are_seen_the_geometric_schedule_applies() -> None:
    durations = RunDurations(window=100, min_samples=20)
    for _ in range(19):
        durations.observe(2.0)
    plan = PollPlan(SCHEDULE, durations, started_at=0.0)
    assert plan.next_delay_s(0.0) == pytest.approx(0.1)


def test_learned_lengths_put_the_first_poll_near_the_earliest_likely_end() -> None:
    durations = RunDurations(window=100, min_samples=20)
    for i in range(100):
        durations.observe(1.5 + i / 100)  # 1.5 .. 2.49 s
    earliest, latest = durations.likely_end_s() or (0.0, 0.0)
    assert 1.5 < earliest < 1.65
    assert 2.35 < latest < 2.49

    plan = PollPlan(SCHEDULE, durations, started_at=0.0)
    assert plan.next_delay_s(0.0) == pytest.approx(earliest)
    # Inside the likely window the step is a quarter of its width.
    assert plan.next_delay_s(earliest) == pytest.approx((latest - earliest) / 4)


def test_learned_polling_sees_runs_sooner_with_fewer_polls_than_the_geometric() -> None:
    learned = RunDurations()
    for i in range(100):
        learned.observe(1.5 + i / 100)
    lengths = [1.5 + i / 40 for i in range(40)]
    geometric = [PollPlan(SCHEDULE, None, 0.0) for _ in lengths]
    informed = [PollPlan(SCHEDULE, learned, 0.0) for _ in lengths]
    late_geometric = [_simulate(p, t) - t for p, t in zip(geometric, lengths, strict=True)]
    late_informed = [_simulate(p, t) - t for p, t in zip(informed, lengths, strict=True)]
    assert max(late_informed) < 0.25 < sorted(late_geometric)[len(lengths) // 2]
    assert sum(p.polls for p in informed) < sum(p.polls for p in geometric)


def test_a_run_longer_than_any_seen_is_backed_off_from() -> None:
    durations = RunDurations(min_samples=20)
    for _ in range(20):
        durations.observe(1.0)
    plan = PollPlan(SCHEDULE, durations, started_at=0.0)
    seen_at = _simulate(plan, 60.0)
    assert seen_at - 60.0 <= 2.0  # never slower than the cap
    assert plan.polls < 60 / 0.1 / 10  # backed off, not polling at the fine step for a minute


def test_lengths_are_learned_from_polls_and_follow_a_change() -> None:
    durations = RunDurations(window=30, min_samples=20)
    for _ in range(30):
        _simulate(PollPlan(SCHEDULE, durations, 0.0), 2.0)
    earliest, latest = durations.likely_end_s() or (0.0, 0.0)
    assert 1.5 < earliest <= latest < 2.5
    # Shorter runs are all seen done at the first poll, so each window of them halves the
    # estimate (midpoint of start and first poll) until the polls catch up with the runs.
    for _ in range(30):
        _simulate(PollPlan(SCHEDULE, durations, 0.0), 0.3)
    _, after_one_window = durations.likely_end_s() or (0.0, 0.0)
    assert after_one_window < 1.0
    for _ in range(60):
        _simulate(PollPlan(SCHEDULE, durations, 0.0), 0.3)
    earliest, latest = durations.likely_end_s() or (0.0, 0.0)
    assert earliest > 0.15
    assert latest < 0.5


def test_the_servers_hint_is_a_floor_for_learned_polls_too() -> None:
    durations = RunDurations(min_samples=20)
    for _ in range(20):
        durations.observe(0.2)
    plan = PollPlan(SCHEDULE, durations, started_at=0.0)
    assert plan.next_delay_s(0.0, server_hint_ms=1000) == pytest.approx(1.0)


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
