"""Optional sampling profiles of the measured process (py-spy).

`python -m bench --profile DIR` attaches `py-spy record` to every contender process; install it
first (`.venv/bin/pip install py-spy`). Profiling costs the target a little CPU, so profiled runs
are for finding out *where* time goes, not for the results table.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
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
