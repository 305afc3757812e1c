"""Optional sampling profiles of the measured process (py-spy), and a flat summary of them.

`python -m bench --profile DIR` attaches `py-spy record` to every contender process; install it
first (`.venv/bin/pip install py-spy`). Profiling costs the target a little CPU, so profiled runs
are for finding out *where* time goes, not for the results table.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


class Recording:
    """`py-spy record` on one process, writing collapsed stacks (one `stack count` per line)."""

    def __init__(self, pid: int, out: Path) -> None:
        self._pid = pid
        self.out = out
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            py_spy(),
            "record",
            "--pid",
            str(self._pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "--gil",  # only samples holding the GIL: CPU spent in Python, not waiting in syscalls
            "--output",
            str(self.out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    async def stop(self) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        self._proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            await asyncio.wait_for(self._proc.wait(), 20)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


# Libraries a sample is charged to: the outermost frame of one of these, entered from the
# worker's code, owns the sample (the OpenAI SDK's transport counts as the SDK's).
LIBRARIES = {
    "openai": "OpenAI SDK (incl. its httpx2 transport)",
    "httpx2": "OpenAI SDK (incl. its httpx2 transport)",
    "asyncpg": "asyncpg (Postgres)",
    "aio_pika": "aio-pika/aiormq (RabbitMQ)",
    "aiormq": "aio-pika/aiormq (RabbitMQ)",
    "pamqp": "aio-pika/aiormq (RabbitMQ)",
    "jsonschema": "jsonschema (event validation)",
    "structlog": "structlog",
    "tenacity": "tenacity (retry wrapper)",
    "prometheus_client": "prometheus_client (metrics)",
    "importlib": "imports",
}


def by_library(path: Path) -> list[tuple[str, float]]:
    """Share of samples per library, each sample charged once (see LIBRARIES); the rest is
    the worker's own code, asyncio and the interpreter."""
    shares: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        total += int(count_text)
        shares[_library(stack.split(";"))] += int(count_text)
    return [(name, n / max(1, total)) for name, n in shares.most_common()]


def _library(frames: list[str]) -> str:
    for frame in frames:
        # py-spy names frames "function (path/relative/to/sys.path.py:line)".
        where = frame.partition(" (")[2].split("site-packages/")[-1]
        package = "importlib" if "<frozen importlib" in where else where.split("/")[0]
        if package in LIBRARIES:
            return LIBRARIES[package]
    return "worker code, asyncio, interpreter"


def summarize(path: Path, top: int = 25, key: str = "module") -> list[tuple[str, float]]:
    """Share of samples per frame (inclusive: a frame counts once per stack it is in).

    `key` "module" groups frames by file (which library), "function" by function.
    """
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        inclusive.update({_name(frame, key): count for frame in set(stack.split(";"))})
    return [(name, n / max(1, total)) for name, n in inclusive.most_common(top)]


def _name(frame: str, key: str) -> str:
    # py-spy frames look like "function (path/to/file.py:line)".
    function, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    path = path.split("site-packages/")[-1].split("/work/main/")[-1]
    return path if key == "module" else f"{function} ({path})"
