"""The benchmark harness in its smallest size: it runs end to end and its results add up.

Timings are never asserted here (the machine is shared and noisy); only that every event was
answered once, the counts agree with what was sent and the report renders.
"""

from __future__ import annotations

from pathlib import Path

from bench.machine import describe
from bench.results_doc import Document
from bench.run import bench, run_once
from bench.scenarios import ASSISTANTS, BASELINE, SMOKE


async def test_bench_smoke(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        results = [await run_once(b, SMOKE, c, repetition=0) for c in (ASSISTANTS, BASELINE)]

    for m in results:
        assert (m.events, m.answered, m.lost, m.duplicated) == (SMOKE.events, SMOKE.events, 0, 0)
        assert m.dead_lettered == 0
        assert m.exit_code == 0
        assert 1 <= m.runs <= SMOKE.events
        assert m.polls_per_run >= 1
        # Each answered event took at least a run create, a poll and a message list per run.
        assert m.requests_per_event * m.answered >= 3 * m.runs
        assert m.cpu_ms_per_event > 0
        assert m.peak_rss_mb > 0

    machine = describe(postgres="test", rabbitmq="test")
    doc = Document("pytest", machine, (SMOKE,), [ASSISTANTS.key, BASELINE.key], 1, results)
    markdown = doc.markdown()
    assert "### (a) instant runs (smoke)" in markdown
    assert "| worker CPU ms per answered event |" in markdown
