"""The command line follows the conventions: `--version`, `-h`, shell completion, exit codes in
every command's help, one-line usage errors, `run` flags over the environment, `--json`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from tests.ports import free_port
from tests.support import worker_env
from tests.test_profiles import DEEPWIKI_TOKEN, ENV, GOOD, REFUND_SECRET
from worker.ops.cli import app
from worker.ops.exits import ExitCode
from worker.ops.profiles_cli import EXIT_VALID, check_profiles_file
from worker.settings import Settings

SCRIPT = Path(sys.executable).parent / "assistant-worker"


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The installed console script, as an operator runs it."""
    proc = await asyncio.create_subprocess_exec(
        SCRIPT,
        *args,
        env={**os.environ, "COLUMNS": "100", **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def command_paths() -> Iterator[list[str]]:
    """Every command and group under the root, as the words that name it."""

    def walk(command: Any, path: list[str]) -> Iterator[list[str]]:
        yield path
        if isinstance(command, TyperGroup):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])

    yield from walk(typer.main.get_command(app), [])


async def test_version_prints_the_installed_version() -> None:
    code, out, err = await cli("--version")
    assert (code, err) == (0, "")
    assert out == f"assistant-worker {version('assistant-worker')}\n"


@pytest.mark.parametrize("path", list(command_paths()), ids=" ".join)
def test_every_command_takes_dash_h_and_lists_its_exit_codes(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "-h"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    help_text = " ".join(result.output.split())  # the epilog may be wrapped
    assert "Exit codes: 0 " in help_text
    listed = [int(code) for code in ExitCode if f"; {int(code)} " in help_text]
    assert ExitCode.USAGE in listed, "a usage error is always possible"
    assert max(len(line) for line in result.output.splitlines()) <= 100


async def test_shell_completion_completes_commands_and_reason_codes() -> None:
    async def complete(words: str) -> list[str]:
        env = {
            "_ASSISTANT_WORKER_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
        }
        code, out, err = await cli(env=env)
        assert code == 0, err
        return out.split()

    assert await complete("assistant-worker dl") == ["dlq"]
    assert "replay" in await complete("assistant-worker dlq ")
    assert await complete("assistant-worker dlq list --reason schema_") == ["schema_invalid"]
    # Typer detects the shell it runs under (sh under CI); its own test switch makes the option
    # take the shell's name instead, as `--install-completion bash` does.
    no_detection = {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    code, script, err = await cli("--show-completion", "bash", env=no_detection)
    assert code == 0, err
    assert "_ASSISTANT_WORKER_COMPLETE=complete_bash" in script


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        ("--concurrency", "0", "should be greater than 0"),
        ("--concurrency", "lots", "valid integer"),
        ("--health-port", "70000", "should be less than or equal to 65535"),
        ("--backend", "foo", "'assistants', 'responses'"),
    ],
)
async def test_a_bad_flag_value_is_one_line_naming_the_flag(
    flag: str, value: str, said: str
) -> None:
    code, out, err = await cli("run", flag, value)
    assert code == 2
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("assistant-worker run: ")
    assert flag in line
    assert said in line
    assert "-h" in line


def test_any_usage_error_is_one_line_with_exit_2() -> None:
    for args in (["dlq", "list", "--since", "soon"], ["dlq", "nosuch"], ["run", "--fast"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, args
        [line] = result.output.splitlines()
        assert line.startswith(f"assistant-worker {args[0]}"), line


async def test_run_flags_beat_the_environment_which_beats_the_default(
    settings: Settings,
) -> None:
    port = free_port()
    env = worker_env(settings, AW_CONCURRENCY="5", AW_BACKEND="assistants", AW_HEALTH_PORT="1")
    proc = await asyncio.create_subprocess_exec(
        SCRIPT,
        "run",
        "--concurrency",
        "3",
        "--health-port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        started = await asyncio.wait_for(_logged(proc.stderr, "worker_started"), timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=30)
    assert started["concurrency"] == 3  # the flag, not AW_CONCURRENCY
    assert started["health_port"] == port  # the flag, not AW_HEALTH_PORT
    assert started["backend"] == "assistants"  # AW_BACKEND, as no flag names one
    assert code == 0


async def _logged(stream: asyncio.StreamReader, event: str) -> dict[str, Any]:
    async for line in stream:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                return record
    raise AssertionError(f"the worker ended without logging {event}")


def test_profiles_check_json_says_what_the_table_says() -> None:
    out = io.StringIO()
    assert check_profiles_file(GOOD, ENV, out, io.StringIO(), as_json=True) == EXIT_VALID
    summary = json.loads(out.getvalue())
    assert summary["valid"] is True
    assert summary["default"] == "support"
    by_name = {profile["name"]: profile for profile in summary["profiles"]}
    assert set(by_name) == {"support", "sales"}
    assert {"name": "order_status", "handler": "python"} in by_name["support"]["function_tools"]
    assert by_name["support"]["hosted_tools"]["file_search"] == {
        "vector_stores": 1,
        "knowledge_files": 3,
    }
    assert by_name["sales"]["hosted_tools"]["web_search"] is True
    assert {"profile": "sales", "when": {"metadata.inbox": ["sales"]}} in summary["routes"]
    assert REFUND_SECRET not in out.getvalue()
    assert DEEPWIKI_TOKEN not in out.getvalue()

    result = CliRunner().invoke(app, ["profiles", "check", str(GOOD), "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == summary
