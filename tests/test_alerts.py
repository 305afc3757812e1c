"""The shipped alerts (components/prometheusrule): checked and unit-tested with promtool, and one
evaluated end to end by a real Prometheus scraping a live worker.

promtool and prometheus come from Debian's `prometheus` package (`.ci/run` installs it). These
tests fail, never skip, without them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aio_pika.abc import AbstractChannel

from tests.conftest import RunningWorker
from tests.support import publish_raw
from worker.metrics import Metrics
from worker.settings import Topology
from worker.webhooks.receiver import WebhookMetrics

ROOT = Path(__file__).resolve().parent.parent
COMPONENT = ROOT / "deploy" / "kustomize" / "components" / "prometheusrule"
RULE_FILE = COMPONENT / "prometheusrule.yaml"
UNIT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
# The name the unit tests' rule_files expects beside them.
RULES_NAME = "rules.yaml"
DEAD_LETTERS = "AssistantWorkerDeadLetters"

Json = dict[str, Any]


_PROMETHEUS_PACKAGE = (
    "Debian's prometheus package (apt-get install --no-install-recommends prometheus; "
    ".ci/run installs it)"
)
WHERE_FROM = {
    "promtool": _PROMETHEUS_PACKAGE,
    "prometheus": _PROMETHEUS_PACKAGE,
    "kubectl": "kubectl 1.27 or newer, as for tests/test_deploy.py (no cluster needed)",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: it comes with {WHERE_FROM[name]}", pytrace=False)
    return path


def shipped_groups() -> Json:
    """The PrometheusRule's spec: a Prometheus rules file as it is."""
    rule: Json = yaml.safe_load(RULE_FILE.read_text())
    spec: Json = rule["spec"]
    return spec


def alerts() -> list[Json]:
    return [rule for group in shipped_groups()["groups"] for rule in group["rules"]]


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The shipped rules and their unit tests, side by side as promtool wants them."""
    (tmp_path / RULES_NAME).write_text(yaml.safe_dump(shipped_groups(), sort_keys=False))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    return tmp_path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


# --- promtool ---------------------------------------------------------------------------


def test_the_shipped_rules_pass_promtool_check(rules_dir: Path) -> None:
    checked = promtool("check", "rules", RULES_NAME, cwd=rules_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_every_alert_passes_its_unit_tests(rules_dir: Path) -> None:
    tested = promtool("test", "rules", UNIT_TESTS.name, cwd=rules_dir)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_case_that_fires_and_one_that_stays_quiet() -> None:
    cases = yaml.safe_load(UNIT_TESTS.read_text())
    assert cases["rule_files"] == [RULES_NAME]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in cases["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fires == set(), "alerts never seen firing in deploy/prometheus"
    assert names - quiet == set(), "alerts never seen staying quiet in deploy/prometheus"
    assert (fires | quiet) - names == set(), "unit tests for alerts that do not exist"


def test_the_issue_and_the_readme_alerts_are_all_shipped() -> None:
    names = {rule["alert"] for rule in alerts()}
    wanted = {
        DEAD_LETTERS,
        "AssistantWorkerRunsFailing",
        "AssistantWorkerReplyLatencyHigh",
        "AssistantWorkerNoReplies",
        "AssistantWorkerOutboxBacklogGrowing",
        "AssistantWorkerConversationsSwept",
        "AssistantWorkerNotReady",
        "AssistantWorkerWebhooksNotReady",
    }
    assert wanted <= names
    for rule in alerts():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def exported_series() -> set[str]:
    """Every series name the worker and the receiver can export."""
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count"),
        "info": ("_info",),
    }
    registries = (Metrics().registry, WebhookMetrics().registry)
    return {
        family.name + suffix
        for registry in registries
        for family in registry.collect()
        for suffix in suffixes[family.type]
    }


def test_the_rules_use_only_exported_series() -> None:
    used = {
        name for rule in alerts() for name in re.findall(r"\bassistant_worker_\w+", rule["expr"])
    }
    assert used, "no rule names a metric"
    unknown = used - exported_series()
    assert not unknown, f"the rules name series nobody exports: {sorted(unknown)}"


def test_the_component_renders_the_rule_in_the_overlays_namespace(tmp_path: Path) -> None:
    kubectl = tool("kubectl")
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "aw-alerts",
                "components": [os.path.relpath(COMPONENT, tmp_path)],
            }
        )
    )
    rendered = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    [rule] = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["namespace"] == "aw-alerts"
    assert rule["spec"] == shipped_groups(), "kustomize changed the rules on the way"


# --- end to end: a real Prometheus scraping a live worker --------------------------------


class Prometheus:
    """A Prometheus server of the test's own: scrape and evaluation every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        (workdir / RULES_NAME).write_text(yaml.safe_dump(shipped_groups(), sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / RULES_NAME)],
            "scrape_configs": [
                {"job_name": "assistant-worker", "static_configs": [{"targets": [target]}]}
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._process: asyncio.subprocess.Process | None = None

    async def start(self, session: aiohttp.ClientSession) -> None:
        with self.log.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                tool("prometheus"),
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                stdout=log,
                stderr=log,
            )
        await self.until(session, self._ready, "Prometheus ready")

    async def stop(self) -> None:
        if self._process is None or self._process.returncode is not None:
            return
        self._process.terminate()
        try:
            await asyncio.wait_for(self._process.wait(), timeout=10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()

    async def _ready(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(f"{self.url}/-/ready") as response:
                return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    async def api(self, session: aiohttp.ClientSession, path: str, **params: str) -> Any:
        async with session.get(f"{self.url}/api/v1/{path}", params=params) as response:
            body: Json = await response.json()
            assert body["status"] == "success", body
            return body["data"]

    async def until(
        self,
        session: aiohttp.ClientSession,
        condition: Callable[[aiohttp.ClientSession], Any],
        what: str,
        timeout_s: float = 30,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not await condition(session):
            if self._process is not None and self._process.returncode is not None:
                pytest.fail(f"prometheus exited {self._process.returncode}:\n{self.log_tail()}")
            assert time.monotonic() < deadline, (
                f"{what}: not within {timeout_s} s\n{self.log_tail()}"
            )
            await asyncio.sleep(0.2)

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def prometheus(
    worker: RunningWorker, tmp_path: Path
) -> AsyncIterator[tuple[Prometheus, aiohttp.ClientSession]]:
    server = Prometheus(tmp_path, f"127.0.0.1:{worker.service.health_port}")
    async with aiohttp.ClientSession() as session:
        try:
            await server.start(session)
            yield server, session
        finally:
            await server.stop()


async def dead_letter_alerts(prom: Prometheus, session: aiohttp.ClientSession) -> list[Json]:
    data = await prom.api(session, "alerts")
    return [a for a in data["alerts"] if a["labels"]["alertname"] == DEAD_LETTERS]


async def test_a_dead_letter_fires_the_shipped_alert_in_a_real_prometheus(
    prometheus: tuple[Prometheus, aiohttp.ClientSession],
    channel: AbstractChannel,
    topology: Topology,
) -> None:
    prom, session = prometheus
    series = 'assistant_worker_events_dead_lettered_total{reason="malformed_json"}'

    async def scraped_at_zero(s: aiohttp.ClientSession) -> bool:
        result = (await prom.api(s, "query", query=series))["result"]
        return bool(result) and result[0]["value"][1] == "0"

    async def rules_evaluated(s: aiohttp.ClientSession) -> bool:
        [group] = (await prom.api(s, "rules", type="alert"))["groups"]
        return all(
            # An unevaluated rule's lastEvaluation is Go's zero time, 0001-01-01.
            r["health"] == "ok" and not r["lastEvaluation"].startswith("0001")
            for r in group["rules"]
        )

    # The zero is scraped and the shipped rules evaluate cleanly before anything happens.
    await prom.until(session, scraped_at_zero, "the dead-letter series scraped at 0")
    await prom.until(session, rules_evaluated, "every shipped rule evaluated")
    assert await dead_letter_alerts(prom, session) == []

    await publish_raw(channel, topology, b"{not json")

    async def firing(s: aiohttp.ClientSession) -> bool:
        return any(a["state"] == "firing" for a in await dead_letter_alerts(prom, s))

    await prom.until(session, firing, f"{DEAD_LETTERS} firing")
    [alert] = await dead_letter_alerts(prom, session)
    assert alert["labels"]["reason"] == "malformed_json"
    assert alert["labels"]["severity"] == "warning"
    assert "dlq list --reason malformed_json" in alert["annotations"]["description"]
