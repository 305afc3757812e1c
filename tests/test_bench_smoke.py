"""The benchmark harness in its smallest size: it runs end to end and its results add up.

Timings are never asserted here (the machine is shared and noisy); only that every event was
answered once, the counts agree with what was sent and the report renders.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractChannel

from bench.forge import KINDS
from bench.load import ReplyCollector
from bench.machine import describe
from bench.measure import RunMetrics
from bench.results_doc import Document
from bench.run import bench, run_once
from bench.scenarios import ASSISTANTS, BASELINE, CONTROL, SMOKE, SMOKE_FORGED, WEBHOOKS
from worker.relay.outbound import H_EVENT_ID
from worker.settings import Topology


def _answered_once(m: RunMetrics, events: int) -> None:
    assert (m.events, m.answered, m.lost, m.duplicated) == (events, events, 0, 0)
    assert m.dead_lettered == 0
    assert m.exit_code == 0
    assert 1 <= m.runs <= events
    assert m.cpu_ms_per_event > 0
    assert m.peak_rss_mb > 0


async def test_bench_smoke(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        polling = [await run_once(b, SMOKE, c, repetition=0) for c in (ASSISTANTS, BASELINE)]
        forged = [await run_once(b, SMOKE_FORGED, c, repetition=0) for c in (WEBHOOKS, CONTROL)]

    for m in polling:
        _answered_once(m, SMOKE.events)
        assert m.polls_per_run >= 1
        # Each answered event took at least a run create, a poll and a message list per run.
        assert m.requests_per_event * m.answered >= 3 * m.runs
        assert m.webhooks == {}
    for m in forged:
        _answered_once(m, SMOKE_FORGED.events)
        assert m.receiver_exit_code == 0
        # Measured (read in 10 ms ticks of /proc, so a smoke run's may read 0), not missing.
        assert m.receiver_cpu_ms_per_event >= 0
        # Every run ended by its webhook: each delivered once and accepted, none refused.
        outcomes = m.webhooks["outcomes"]
        assert m.webhooks["delivered"] == m.webhooks["tries"] == outcomes["accepted"] >= m.runs
        assert outcomes["duplicate"] == 0
        # A response's create, then its one retrieve once its webhook came.
        assert m.requests_per_run * m.runs >= 2 * m.runs
    attacked, control = forged
    assert control.forged == {}
    assert attacked.forged["sent"] == SMOKE_FORGED.forged
    answers = attacked.forged["answers"]
    assert set(answers) == {kind.name for kind in KINDS}
    assert sum(sum(counts.values()) for counts in answers.values()) == SMOKE_FORGED.forged
    assert all(status in ("400", "401") for counts in answers.values() for status in counts)
    refused = sum(
        n
        for outcome, n in attacked.webhooks["outcomes"].items()
        if outcome not in ("accepted", "duplicate")
    )
    assert refused == SMOKE_FORGED.forged

    machine = describe(postgres="test", rabbitmq="test")
    keys = [ASSISTANTS.key, BASELINE.key, WEBHOOKS.key]
    doc = Document("pytest", machine, (SMOKE, SMOKE_FORGED), keys, 1, polling + forged)
    markdown = doc.markdown()
    assert "### (a) instant runs (smoke)" in markdown
    assert "| worker CPU ms per answered event |" in markdown
    assert "### (e) forged webhooks (smoke)" in markdown
    assert "### (e) forged deliveries" in markdown
    assert "| (e) no forged delivery accepted: every answer 4xx | webhooks |" in markdown


async def test_an_event_dead_lettered_ends_the_wait_and_is_not_lost(
    channel: AbstractChannel, topology: Topology
) -> None:
    # One event is answered, one dead-lettered (late, as after its last retry): the wait ends
    # with both accounted for, the second as dead-lettered, neither missing.
    collector = ReplyCollector({"evt-answered", "evt-dead"})
    await collector.start(channel, topology)
    reply = {"event_id": "rep-1", "in_reply_to": ["evt-answered"]}
    await channel.default_exchange.publish(
        aio_pika.Message(json.dumps(reply).encode()), routing_key=topology.reply_queue
    )
    dead = aio_pika.Message(b"{}", headers={H_EVENT_ID: "evt-dead"})
    await channel.default_exchange.publish(dead, routing_key=topology.dead_letter_queue)

    await asyncio.wait_for(collector.wait(quiet_s=10, settle_s=0), 10)

    assert collector.missing == set()
    assert collector.dead_lettered == {"evt-dead"}
    assert [r.reply["event_id"] for r in collector.received] == ["rep-1"]
