"""The delivery guarantees under fire: kill -9, several workers, faults, duplicates, bursts.

Workers are real processes; each test checks the same invariants (tests/harness.py `check`):
every event answered exactly once, no reply ID with two contents, no user message twice in a
thread, no second run for one batch attempt that went on (one cancelled at once after a lost
create answer is allowed: see Runner._keep_earlier), and no thread with two active runs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.harness import (
    ALL_CRASH_POINTS,
    ReplyCollector,
    Supervisor,
    chaos_env,
    check,
    publish_load,
)
from tests.support import publish, worker_env
from tests.webhook_receiver import WEBHOOK_FAULTS, running_receiver, with_webhooks
from worker.settings import Settings, Topology


@pytest.fixture(params=["assistants", "responses"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def supervised(
    settings: Settings, tmp_path: Path, *, count: int, crash_points: str | None = None
) -> AsyncIterator[Supervisor]:
    env = chaos_env(worker_env(settings))
    supervisor = Supervisor(env, count, tmp_path, crash_points=crash_points)
    await supervisor.start()
    try:
        yield supervisor
    finally:
        await supervisor.stop()


async def _kill_now_and_then(supervisor: Supervisor, every_s: float, until: asyncio.Event) -> None:
    while not until.is_set():
        await asyncio.sleep(every_s)
        supervisor.kill_one()


@pytest.mark.timeout(180)
async def test_kill_nine_anywhere_loses_nothing_and_doubles_nothing(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    collector: ReplyCollector,
    tmp_path: Path,
) -> None:
    async with supervised(settings, tmp_path, count=1, crash_points=ALL_CRASH_POINTS) as sup:
        calm = asyncio.Event()
        shooter = asyncio.create_task(_kill_now_and_then(sup, 2.0, calm))
        sent = await publish_load(channel, topology, events=200, conversations=25, rate_per_s=40)
        await asyncio.sleep(3)
        # Let the tail finish without new crashes, so the test ends in bounded time.
        calm.set()
        sup.crash_points = None
        await shooter
        await collector.wait_for_all(sent, timeout_s=90, workers=sup)

    report = check(sent, collector, standin)
    assert report.violations == {}
    assert report.answered == len(sent)
    assert sup.kills >= 4, "the workers were hardly killed; the test proves little"
    print(f"kills={sup.kills} restarts={sup.restarts} report={report}")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["responses"])
async def test_kill_nine_with_webhooks_dropped_duplicated_delayed_reordered_and_forged(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    collector: ReplyCollector,
    tmp_path: Path,
) -> None:
    hooked = with_webhooks(settings, standin, sweep_s=2.0)
    standin.add_faults(WEBHOOK_FAULTS)
    async with running_receiver(hooked, standin):
        env = chaos_env(worker_env(hooked, AW_WEBHOOKS="true", AW_WEBHOOK_SWEEP_S="2"))
        sup = Supervisor(env, 2, tmp_path, crash_points=ALL_CRASH_POINTS)
        await sup.start()
        try:
            calm = asyncio.Event()
            shooter = asyncio.create_task(_kill_now_and_then(sup, 2.0, calm))
            sent = await publish_load(
                channel, topology, events=150, conversations=20, rate_per_s=40
            )
            await asyncio.sleep(3)
            calm.set()
            sup.crash_points = None
            await shooter
            await collector.wait_for_all(sent, timeout_s=90, workers=sup)
        finally:
            await sup.stop()

    report = check(sent, collector, standin)
    assert report.violations == {}
    assert report.answered == len(sent)
    assert sup.kills >= 3, "the workers were hardly killed; the test proves little"
    faults = Counter(a["fault"] for a in standin.webhook_attempts() if a["fault"])
    # Each kind of fault happened, so each was made up for.
    assert set(faults) >= {"webhook_drop", "webhook_duplicate", "webhook_delay"}
    # The workers waited for webhooks rather than polling: few looks per response.
    looks = sum(1 for e in standin.journal if e["method"] == "GET" and "/responses/" in e["path"])
    responses = len(standin.state.responses)
    assert looks < 2.5 * responses, f"{looks} looks at {responses} responses: polling?"
    print(
        f"kills={sup.kills} restarts={sup.restarts} faults={dict(faults)} "
        f"looks={looks} responses={responses} report={report}"
    )


@pytest.mark.timeout(180)
async def test_two_workers_on_one_queue_never_run_a_conversation_twice_at_once(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    collector: ReplyCollector,
    tmp_path: Path,
) -> None:
    async with supervised(settings, tmp_path, count=3, crash_points=ALL_CRASH_POINTS) as sup:
        sent = await publish_load(channel, topology, events=150, conversations=12, rate_per_s=50)
        sup.crash_points = None
        await collector.wait_for_all(sent, timeout_s=90, workers=sup)

    report = check(sent, collector, standin)
    assert report.violations == {}
    # The thread lock was never hit: owners serialise runs themselves.
    assert [e for e in standin.journal if e["status"] == 400] == []


@pytest.mark.timeout(120)
async def test_api_faults_at_a_steady_rate_change_nothing_and_retry_after_is_honoured(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    collector: ReplyCollector,
    tmp_path: Path,
) -> None:
    standin.add_faults(
        [
            {"kind": "status", "status": 429, "retry_after_s": 0.4, "rate": 0.05},
            {"kind": "status", "status": 500, "rate": 0.04},
            {"kind": "status", "status": 503, "rate": 0.02},
            {"kind": "slow", "delay_s": 0.3, "rate": 0.04},
            {"kind": "drop", "rate": 0.02},
            {"kind": "drop_after", "rate": 0.02},
        ]
    )
    # Runs as long as real ones (seconds), not 100 ms: a create whose answer was lost can race
    # an earlier one that ends meanwhile, and the worker cancels the second within a few
    # requests. A run shorter than a few faulted requests could end before that (see README).
    standin.update_config({"run_duration_ms": 1000})
    async with supervised(settings, tmp_path, count=1) as sup:
        sent = await publish_load(channel, topology, events=120, conversations=15, rate_per_s=40)
        await collector.wait_for_all(sent, timeout_s=90, workers=sup)

    report = check(sent, collector, standin)
    assert report.violations == {}
    faults = Counter(e["fault"] for e in standin.journal if e["fault"])
    assert faults["status"] > 0
    assert faults["drop_after"] > 0
    for gap in retry_after_gaps(standin.journal):
        assert gap >= 0.39, f"retried {gap:.3f} s after a 429 that asked for 0.4 s"


@pytest.mark.timeout(120)
async def test_duplicates_and_bursts_get_one_reply_per_batch_in_order(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    collector: ReplyCollector,
    tmp_path: Path,
) -> None:
    async with supervised(settings, tmp_path, count=2) as sup:
        sent = []
        for conversation in range(8):
            for n in range(5):
                event = {
                    "event_id": f"burst-{conversation}-{n}",
                    "conversation_id": f"burst-{conversation}",
                    "text": f"burst {conversation} message {n} [[delay_ms:300]]",
                    "occurred_at": datetime.now(UTC).isoformat(),
                }
                for _ in range(3):  # the same event, three times
                    await publish(channel, topology, **event)
                sent.append(event)
                await asyncio.sleep(0.02)
        await collector.wait_for_all(sent, timeout_s=60, workers=sup)

    report = check(sent, collector, standin)
    assert report.violations == {}
    replies = {r.message_id: r.reply for r in collector.received}.values()
    for reply in replies:
        # Within a reply, the events in the order the customer wrote them.
        position = [int(event_id.rsplit("-", 1)[1]) for event_id in reply["in_reply_to"]]
        assert position == sorted(position), reply["in_reply_to"]
    runs = len(standin.run_records())
    assert runs < len(sent), f"{runs} runs for {len(sent)} events: no coalescing"


@pytest.mark.timeout(120)
async def test_sigterm_mid_load_hands_back_work_and_loses_nothing(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    collector: ReplyCollector,
    tmp_path: Path,
) -> None:
    env = {**chaos_env(worker_env(settings)), "AW_SHUTDOWN_GRACE_S": "1"}
    first = Supervisor(env, 1, tmp_path / "first")
    (tmp_path / "first").mkdir()
    await first.start()
    await first.wait_ready()
    sent = []
    for n in range(40):
        slow = " [[delay_ms:3000]]" if n < 5 else ""  # these outlast the grace period
        sent.append(
            await publish(channel, topology, conversation_id=f"term-{n % 10}", text=f"t{n}{slow}")
        )
    await asyncio.sleep(1.0)
    started = time.monotonic()
    codes = await first.stop()  # SIGTERM while runs are in flight
    assert codes == [0]
    assert time.monotonic() - started < 10

    (tmp_path / "second").mkdir()
    second = Supervisor(chaos_env(worker_env(settings)), 1, tmp_path / "second")
    await second.start()
    try:
        await collector.wait_for_all(sent, timeout_s=60, workers=second)
    finally:
        await second.stop()
    assert check(sent, collector, standin).violations == {}


def retry_after_gaps(journal: list[dict[str, object]]) -> list[float]:
    """Seconds between each 429 and the next request to the same resource.

    Only paths naming one thread, run or conversation count: one owner works on each at a time,
    so the next request there is the retry of the refused one.
    """
    gaps = []
    for n, entry in enumerate(journal):
        if entry["status"] != 429 or not _names_one_resource(str(entry["path"])):
            continue
        for later in journal[n + 1 :]:
            if (later["method"], later["path"]) == (entry["method"], entry["path"]):
                gaps.append(float(later["at"]) - float(entry["at"]))  # type: ignore[arg-type]
                break
    return gaps


def _names_one_resource(path: str) -> bool:
    return any(marker in path for marker in ("/thread_", "/run_", "/conv_", "/resp_"))
