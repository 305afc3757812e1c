"""Errors are translated at the boundaries: the relay's modules see the worker's own exceptions.

Read from the source (no import needed): a relay module that imports the SDK's or a driver's
exception classes is deciding from another layer's types.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parent.parent / "worker"
RELAY = sorted((WORKER / "relay").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports from, as written (`from a.b import c` gives `a.b`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", RELAY, ids=lambda p: p.name)
def test_the_relay_imports_nothing_of_the_sdk_but_its_request_types(path: Path) -> None:
    sdk = {m for m in imported_modules(path) if m == "openai" or m.startswith("openai.")}
    assert {m for m in sdk if not m.startswith("openai.types")} == set()


def test_the_relay_modules_are_all_checked() -> None:
    assert {p.name for p in RELAY} >= {"runner.py", "retry.py", "conversation.py", "intake.py"}


CORE = (
    "worker.relay.intake",
    "worker.relay.ownership",
    "worker.relay.conversation",
    "worker.relay.runner",
    "worker.errors",
)
DRIVERS = ("aio_pika", "aiormq", "pamqp", "asyncpg")

TOP_LEVEL_MODULES = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def drivers_loaded_by(*modules: str) -> list[str]:
    """The drivers a fresh interpreter has loaded once it imported `modules`."""
    done = subprocess.run(
        [sys.executable, "-c", TOP_LEVEL_MODULES, *modules],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return sorted(set(done.stdout.split()) & set(DRIVERS))


def test_importing_the_core_loads_no_broker_or_database_driver() -> None:
    # A fresh interpreter: this one loaded the drivers for other tests long ago.
    assert drivers_loaded_by(*CORE) == []


def test_the_driver_check_sees_a_driver_when_one_is_loaded() -> None:
    loaded = drivers_loaded_by("worker.store.postgres", "worker.relay.consume")
    assert loaded == ["aio_pika", "aiormq", "asyncpg", "pamqp"]
