"""What the numbers were measured on: they mean little without it."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from typing import Any


def describe(*, postgres: str, rabbitmq: str) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(_mem_total_kb() / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "postgres": postgres,
        "rabbitmq": rabbitmq,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_kb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def summary(machine: dict[str, Any]) -> str:
    return (
        f"{machine['nproc']} CPUs ({machine['cpu_model']}), {machine['memory_gib']} GiB, "
        f"Python {machine['python']}, Linux {machine['kernel']}, PostgreSQL "
        f"{machine['postgres']}, RabbitMQ {machine['rabbitmq']}; load average at start "
        f"{', '.join(str(v) for v in machine['load_average_at_start'])}; {machine['date']}"
    )
