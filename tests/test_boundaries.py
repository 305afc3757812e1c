"""Errors are translated at the boundaries: the relay's modules see the worker's own exceptions.

Read from the source (no import needed): a relay module that imports the SDK's or a driver's
exception classes is deciding from another layer's types.
"""

from __future__ import annotations

import ast
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
