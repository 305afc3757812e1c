"""Settings fail closed: a bad value is one line naming the variable, exit 2, no secret quoted;
no API key, no `run`; a typo is pointed out; refused credentials are told from a dead server.
Settings come from files in AW_SECRETS_DIR too, below the environment."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from aiormq.exceptions import AMQPConnectionError, ProbableAuthenticationError

from tests.ports import free_port
from tests.support import AMQP_URL, API_KEY, admin_sql, dsn_for
from worker.errors import StoreUnavailable
from worker.settings import InvalidSettings, Settings, load_settings, unknown_variables
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


# --- secrets as files (AW_SECRETS_DIR) ----------------------------------------------------


def _kubernetes_volume(directory: Path, files: dict[str, str | bytes]) -> Path:
    """`files` laid out as the kubelet mounts a Secret: each key a link into ..data, itself a
    link to a timestamped directory (swapped in one step on a rotation)."""
    real = directory / "..2026_01_01_00_00_00.000000001"
    real.mkdir(parents=True)
    for name, content in files.items():
        target = real / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    (directory / "..data").symlink_to(real.name)
    for name in files:
        (directory / name).symlink_to(f"..data/{name}")
    return directory


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No AW_* or OPENAI_* variable from the environment running the tests."""
    for key in list(os.environ):
        if key.startswith(("AW_", "OPENAI_")):
            monkeypatch.delenv(key)
    return monkeypatch


def test_secret_settings_are_read_from_the_files_of_a_mounted_secret(
    tmp_path: Path, secrets_env: pytest.MonkeyPatch
) -> None:
    database = f"postgresql://app:{SECRET}@db.internal:5432/aw"
    directory = _kubernetes_volume(
        tmp_path / "secrets",
        {
            "AW_DATABASE_URL": database,
            "AW_AMQP_URL": f"amqp://app:{SECRET}@rabbit.internal:5672/",
            "AW_OPENAI_API_KEY": API_KEY,
            # The Secret's key for the webhook secret is the setting's other name.
            "OPENAI_WEBHOOK_SECRET": "whsec_c2VjcmV0",
            "AW_INBOUND_QUEUE": "from.a.file",  # a topology field: its own settings model
        },
    )
    secrets_env.setenv("AW_SECRETS_DIR", str(directory))
    settings = load_settings()
    assert settings.database_url.get_secret_value() == database
    assert settings.amqp_url.get_secret_value() == f"amqp://app:{SECRET}@rabbit.internal:5672/"
    assert settings.openai_api_key.get_secret_value() == API_KEY
    assert settings.openai_webhook_secret.get_secret_value() == "whsec_c2VjcmV0"
    assert settings.topology.inbound_queue == "from.a.file"
    assert settings.webhook_secret_previous.get_secret_value() == "", "an absent file: default"
    # dlq builds Settings() itself, past load_settings: the same sources.
    assert Settings().database_url.get_secret_value() == database


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\n\n"])
def test_a_files_trailing_newline_is_not_part_of_the_value(
    tmp_path: Path, secrets_env: pytest.MonkeyPatch, ending: str
) -> None:
    # `kubectl create secret generic --from-file` and `echo > file` keep one.
    (tmp_path / "AW_OPENAI_API_KEY").write_text(f"sk-with spaces inside{ending}", newline="")
    secrets_env.setenv("AW_SECRETS_DIR", str(tmp_path))
    assert load_settings().openai_api_key.get_secret_value() == "sk-with spaces inside"


@pytest.mark.parametrize(
    ("variable", "file", "field", "from_env"),
    [
        ("AW_DATABASE_URL", "AW_DATABASE_URL", "database_url", "postgresql://env@127.0.0.1/env"),
        # The setting's other name: pydantic would take the first alias present, the file's.
        ("OPENAI_API_KEY", "AW_OPENAI_API_KEY", "openai_api_key", "sk-env"),
        ("AW_WEBHOOK_SECRET", "OPENAI_WEBHOOK_SECRET", "openai_webhook_secret", "whsec_env"),
        # Empty is a value too: the operator blanked it out on purpose.
        ("AW_WEBHOOK_SECRET_PREVIOUS", "AW_WEBHOOK_SECRET_PREVIOUS", "webhook_secret_previous", ""),
    ],
)
def test_an_environment_variable_wins_over_its_file(
    tmp_path: Path,
    secrets_env: pytest.MonkeyPatch,
    variable: str,
    file: str,
    field: str,
    from_env: str,
) -> None:
    (tmp_path / file).write_text("postgresql://file@127.0.0.1/file\n")
    secrets_env.setenv("AW_SECRETS_DIR", str(tmp_path))
    secrets_env.setenv(variable, from_env)
    assert getattr(load_settings(), field).get_secret_value() == from_env


async def test_a_secrets_dir_that_is_not_there_is_one_line_naming_it(tmp_path: Path) -> None:
    env = _bare_env(AW_SECRETS_DIR=str(tmp_path / "missing"))
    code, out, err = await _cli(env, "migrate")
    assert (code, out) == (2, "")
    [line] = err.splitlines()
    assert line.startswith("assistant-worker: invalid setting AW_SECRETS_DIR=")
    assert line.endswith(": no such directory")


def test_a_secrets_dir_that_is_a_file_is_refused(
    tmp_path: Path, secrets_env: pytest.MonkeyPatch
) -> None:
    (tmp_path / "AW_DATABASE_URL").write_text("postgresql://app@db/aw")
    secrets_env.setenv("AW_SECRETS_DIR", str(tmp_path / "AW_DATABASE_URL"))
    with pytest.raises(InvalidSettings, match=r"^invalid setting AW_SECRETS_DIR=.*: not a dir"):
        load_settings()


def _unreadable_secret(kind: str, directory: Path, outside: Path) -> None:
    name = directory / "AW_AMQP_URL"
    if kind == "a directory":
        name.mkdir()
    elif kind == "a dangling link":
        name.symlink_to("..data/AW_AMQP_URL")
    elif kind == "a link out of the directory":
        outside.write_text(f"amqp://app:{SECRET}@rabbit/")
        name.symlink_to(outside)
    else:
        name.write_bytes(b"amqp://app:" + SECRET.encode() + b"\xff\xfe@rabbit/")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("a directory", "not a file"),
        ("a dangling link", "not a file"),
        ("a link out of the directory", "not a file inside the directory"),
        ("not UTF-8", "not UTF-8"),
    ],
)
def test_a_file_that_cannot_be_read_names_its_variable_never_its_content(
    tmp_path: Path, secrets_env: pytest.MonkeyPatch, kind: str, reason: str
) -> None:
    directory = tmp_path / "secrets"
    directory.mkdir()
    _unreadable_secret(kind, directory, tmp_path / "elsewhere")
    secrets_env.setenv("AW_SECRETS_DIR", str(directory))
    with pytest.raises(InvalidSettings) as raised:
        load_settings()
    assert str(raised.value) == (
        f"invalid setting AW_AMQP_URL: its file in AW_SECRETS_DIR cannot be read ({reason})"
    )


async def test_an_unreadable_file_stops_a_command_in_one_line(tmp_path: Path) -> None:
    _unreadable_secret("not UTF-8", tmp_path, tmp_path / "unused")
    code, _, err = await _cli(_bare_env(AW_SECRETS_DIR=str(tmp_path)), "migrate")
    assert code == 2
    [line] = err.splitlines()
    assert "AW_AMQP_URL" in line
    assert SECRET not in err
    assert "Traceback" not in err


async def test_a_bad_value_in_a_file_names_the_file_and_never_quotes_it(tmp_path: Path) -> None:
    (tmp_path / "AW_DATABASE_URL").write_text(f"mysql://app:{SECRET}@127.0.0.1/aw\n")
    code, _, err = await _cli(_bare_env(AW_SECRETS_DIR=str(tmp_path)), "migrate")
    assert code == 2
    [line] = err.splitlines()
    assert "AW_DATABASE_URL (file in AW_SECRETS_DIR): should be a URL starting with" in line
    assert SECRET not in err


async def test_migrate_takes_the_database_url_from_its_file(tmp_path: Path) -> None:
    # A database that does not exist yet: migrate creates it, so only the file's URL can have
    # named it (the default URL names another).
    name = f"aw_test_{uuid.uuid4().hex[:12]}"
    _kubernetes_volume(tmp_path / "secrets", {"AW_DATABASE_URL": dsn_for(name) + "\n"})
    try:
        code, out, err = await _cli(_bare_env(AW_SECRETS_DIR=str(tmp_path / "secrets")), "migrate")
        assert code == 0, err
        assert out.splitlines()[0] == "applied 0001_initial"
        conn = await asyncpg.connect(dsn_for(name))
        try:
            assert await conn.fetchval("SELECT to_regclass('conversations') IS NOT NULL")
        finally:
            await conn.close()
    finally:
        await admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_misspelt_file_is_pointed_out_like_a_misspelt_variable(
    tmp_path: Path, secrets_env: pytest.MonkeyPatch
) -> None:
    for name in ("AW_DATABSE_URL", "AW_OPENAI_API_KEY", "OPENAI_WEBHOOK_SECRET"):
        (tmp_path / name).write_text("x")
    (tmp_path / "..data").mkdir()  # the kubelet's own entries are no settings
    secrets_env.setenv("AW_SECRETS_DIR", str(tmp_path))
    assert unknown_variables() == [("AW_DATABSE_URL", "AW_DATABASE_URL")]
