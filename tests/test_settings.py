"""Settings fail closed: a bad value is one line naming the variable, exit 2, no secret quoted;
no API key, no `run`; a typo is pointed out; refused credentials are told from a dead server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import asyncpg
import pytest
from aiormq.exceptions import AMQPConnectionError, ProbableAuthenticationError

from tests.ports import free_port
from tests.support import AMQP_URL, API_KEY
from worker.errors import StoreUnavailable
from worker.startup import Server, explain, is_outage, refused_credentials, unreachable

REPO = Path(__file__).resolve().parent.parent
SECRET = "pw-s3cret-0042"


def _bare_env(**settings: str) -> dict[str, str]:
    """This environment without anyone's AW_* or OPENAI_* settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AW_", "OPENAI_"))}
    return {**env, "AW_LOG_FORMAT": "json", "AW_HEALTH_HOST": "127.0.0.1", **settings}


async def _cli(env: dict[str, str], *args: str, timeout_s: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout_s):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _records(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("AW_BACKEND", "foo", "'assistants' or 'responses'"),
        ("AW_CONCURRENCY", "0", "greater than 0"),
        ("AW_CONCURRENCY", "lots", "valid integer"),
        ("AW_LOG_LEVEL", "loud", "'debug', 'info', 'warning', 'error' or 'critical'"),
        ("AW_LOG_FORMAT", "xml", "'auto', 'json' or 'console'"),
        ("AW_DELIVERY_LIMIT", "0", "greater than 0"),  # a topology field
        ("AW_POLL_GROWTH", "fast", "valid number"),
        ("AW_BATCH_MAX_EVENTS", "21", "less than or equal to 20"),
        ("OPENAI_BASE_URL", "ftp://mirror/v1", "https:// or http://"),  # an alias
    ],
)
async def test_an_invalid_setting_is_one_line_naming_the_variable(
    variable: str, value: str, allowed: str
) -> None:
    code, out, err = await _cli(_bare_env(**{variable: value}), "run")
    assert code == 2
    assert out == ""
    [line] = err.splitlines()
    assert variable in line
    assert allowed in line
    assert "Traceback" not in err
    assert "validation error" not in line
    # The field's own name is pydantic's business, not the operator's.
    assert variable.removeprefix("AW_").removeprefix("OPENAI_").lower() not in line


async def test_every_command_refuses_a_bad_setting_the_same_way() -> None:
    # dlq builds its settings itself; the check in front of every command still answers.
    code, _, err = await _cli(_bare_env(AW_CONCURRENCY="-1"), "dlq", "stats")
    assert code == 2
    [line] = err.splitlines()
    assert "AW_CONCURRENCY" in line


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AW_AMQP_URL", f"http://guest:{SECRET}@127.0.0.1:5672/"),
        ("AW_DATABASE_URL", f"mysql://app:{SECRET}@127.0.0.1/aw"),
        ("AW_OPENAI_BASE_URL", f"ftp://user:{SECRET}@mirror/v1"),
    ],
)
async def test_a_secret_in_a_bad_value_is_never_quoted(variable: str, value: str) -> None:
    code, _, err = await _cli(_bare_env(**{variable: value}), "migrate")
    assert code == 2
    [line] = err.splitlines()
    assert variable in line
    assert SECRET not in err


@pytest.mark.parametrize("key", [None, ""])
async def test_run_refuses_to_start_without_an_api_key(key: str | None) -> None:
    env = _bare_env() if key is None else _bare_env(OPENAI_API_KEY=key)
    code, _, err = await _cli(env, "run")
    assert code == 2
    [line] = err.splitlines()
    assert "AW_OPENAI_API_KEY" in line
    assert "OPENAI_API_KEY" in line.replace("AW_OPENAI_API_KEY", "")


async def test_commands_that_never_call_the_api_need_no_key(database_url: str) -> None:
    code, out, err = await _cli(_bare_env(AW_DATABASE_URL=database_url), "migrate")
    assert code == 0, err
    assert out.strip() == "database schema is up to date"


async def test_an_unknown_aw_variable_is_warned_about_with_the_likely_name(
    database_url: str,
) -> None:
    env = _bare_env(
        AW_DATABASE_URL=database_url,
        AW_CONCURENCY="8",
        AW_TEST_SOMETHING="1",
        AW_CRASH_POINTS="",
        AW_FAULT_POINTS="",
    )
    code, _, err = await _cli(env, "migrate")
    assert code == 0, err
    warnings = [r for r in _records(err) if r["event"] == "unknown_setting"]
    assert warnings == [
        {
            "variable": "AW_CONCURENCY",
            "did_you_mean": "AW_CONCURRENCY",
            "event": "unknown_setting",
            "level": "warning",
            "timestamp": warnings[0]["timestamp"],
        }
    ]


async def test_a_wrong_rabbitmq_password_is_refused_credentials_not_unreachable(
    database_url: str,
) -> None:
    url = AMQP_URL.replace("guest:guest@", f"guest:{SECRET}@")
    assert SECRET in url, "the test's broker URL has other credentials than guest:guest"
    env = _bare_env(AW_DATABASE_URL=database_url, AW_AMQP_URL=url, AW_OPENAI_API_KEY=API_KEY)
    code, _, err = await _cli(env, "run")
    assert code == 1
    [failed] = [r for r in _records(err) if r["event"] == "worker_failed"]
    assert failed["hint"] == "RabbitMQ refused the credentials in AW_AMQP_URL"
    assert not [r for r in _records(err) if str(r["event"]).startswith("waiting_for")]
    assert SECRET not in err
    assert API_KEY not in err


async def test_an_unknown_postgres_role_is_refused_credentials_not_unreachable() -> None:
    # Postgres here trusts every connection from 127.0.0.1, so a wrong password is accepted;
    # a role that does not exist is refused the same way (28000, the parent of 28P01).
    dsn = f"postgresql://aw_nobody:{SECRET}@127.0.0.1:5432/postgres"
    env = _bare_env(AW_DATABASE_URL=dsn, AW_OPENAI_API_KEY=API_KEY)
    code, _, err = await _cli(env, "run")
    assert code == 1
    [failed] = [r for r in _records(err) if r["event"] == "worker_failed"]
    assert failed["hint"] == "Postgres refused the credentials in AW_DATABASE_URL"
    assert SECRET not in err


async def test_a_postgres_nobody_listens_on_is_unreachable_for_migrate() -> None:
    port = free_port()
    dsn = f"postgresql://app:{SECRET}@127.0.0.1:{port}/aw"
    code, _, err = await _cli(_bare_env(AW_DATABASE_URL=dsn), "migrate")
    assert code == 1
    [failed] = [r for r in _records(err) if r["event"] == "migrate_failed"]
    assert failed["hint"] == f"cannot reach Postgres at 127.0.0.1:{port} (AW_DATABASE_URL)"
    assert SECRET not in err


AMQP = f"amqp://app:{SECRET}@rabbit.internal:5673/"
PG = f"postgresql://app:{SECRET}@db.internal/aw"


@pytest.mark.parametrize(
    ("error", "refused", "down", "hint"),
    [
        (
            asyncpg.InvalidPasswordError('password authentication failed for user "app"'),
            Server.POSTGRES,
            None,
            "Postgres refused the credentials in AW_DATABASE_URL",
        ),
        (
            asyncpg.InvalidAuthorizationSpecificationError('role "app" does not exist'),
            Server.POSTGRES,
            None,
            "Postgres refused the credentials in AW_DATABASE_URL",
        ),
        (
            ProbableAuthenticationError("ACCESS_REFUSED - Login was refused"),
            Server.RABBITMQ,
            None,
            "RabbitMQ refused the credentials in AW_AMQP_URL",
        ),
        (
            AMQPConnectionError(111, "Connect call failed ('10.0.0.7', 5673)"),
            None,
            Server.RABBITMQ,
            "cannot reach RabbitMQ at rabbit.internal:5673 (AW_AMQP_URL)",
        ),
        (
            ConnectionRefusedError(111, "Connect call failed ('10.0.0.8', 5432)"),
            None,
            Server.POSTGRES,
            "cannot reach Postgres at db.internal:5432 (AW_DATABASE_URL)",
        ),
        (asyncpg.InvalidCatalogNameError('database "aw" does not exist'), None, None, None),
    ],
)
def test_refused_credentials_are_told_from_an_unreachable_server(
    error: Exception, refused: Server | None, down: Server | None, hint: str | None
) -> None:
    assert refused_credentials(error) is refused
    assert unreachable(error) is down
    assert is_outage(error) is (down is not None)
    assert explain(error, AMQP, PG) == hint


def test_a_store_that_lost_postgres_mid_command_gets_the_unreachable_hint() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('10.0.0.8', 5432)")
        except ConnectionRefusedError as exc:
            raise StoreUnavailable("Postgres unavailable: ConnectionRefusedError") from exc
    except StoreUnavailable as lost:
        hint = explain(lost, AMQP, PG)
    assert hint == "cannot reach Postgres at db.internal:5432 (AW_DATABASE_URL)"
