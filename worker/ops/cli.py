"""The `assistant-worker` command."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import structlog
import typer

from worker.logging import configure_logging
from worker.ops.conventions import CONTEXT, OneLineErrors, show_version
from worker.ops.dlq_cli import app as dlq_app
from worker.ops.exits import ExitCode, exit_codes
from worker.ops.flags import flag_help, given_flags
from worker.settings import (
    API_KEY_VARIABLES,
    BackendName,
    EventLoop,
    InvalidSettings,
    LogLevel,
    Settings,
    load_settings,
    unknown_variables,
)

if TYPE_CHECKING:
    from worker.profiles.model import Profiles
    from worker.store.postgres import PostgresStore as Store

app = typer.Typer(
    cls=OneLineErrors,
    help="Relay helpdesk messages to an OpenAI assistant and publish its replies.",
    epilog=exit_codes(
        {
            ExitCode.OK: "done",
            ExitCode.FAILED: "failed (logged, with a hint)",
            ExitCode.USAGE: "bad usage or setting",
            ExitCode.UNREACHABLE: "RabbitMQ unreachable (dlq)",
            ExitCode.NOT_FOUND: "a queue or exchange missing (dlq); each command's -h says which",
        }
    ),
    no_args_is_help=True,
    context_settings=CONTEXT,
    # Docstring paragraphs are reflowed to the terminal, not broken where the source breaks.
    rich_markup_mode="markdown",
)
# As for a bad option: the operator has to change how the command is started.
EXIT_BAD_SETTINGS = ExitCode.USAGE
# What most commands' exit codes mean; the others say theirs.
PLAIN_EXITS = exit_codes(
    {
        ExitCode.OK: "done",
        ExitCode.FAILED: "failed (logged, with a hint)",
        ExitCode.USAGE: "bad usage or setting",
    }
)


def _settings(**defaults: Any) -> Settings:
    """Loads settings from the environment; `defaults` apply where the environment is silent."""
    settings = _load_or_exit()
    unset = {k: v for k, v in defaults.items() if f"AW_{k.upper()}" not in os.environ}
    settings = settings.model_copy(update=unset)
    secrets = [
        settings.openai_api_key.get_secret_value(),
        settings.openai_webhook_secret.get_secret_value(),
        settings.webhook_secret_previous.get_secret_value(),
    ]
    for dsn in (settings.amqp_url, settings.database_url):
        secrets.append(dsn.get_secret_value())
        password = _password(dsn.get_secret_value())
        if password:
            secrets.append(password)
    configure_logging(settings.log_level, settings.log_format, secrets)
    _warn_unknown_variables()
    return settings


def _load_or_exit() -> Settings:
    try:
        return load_settings()
    except InvalidSettings as exc:
        typer.echo(f"assistant-worker: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None


def _warn_unknown_variables() -> None:
    log = structlog.get_logger("worker.ops.cli")
    for name, closest in unknown_variables():
        log.warning("unknown_setting", variable=name, did_you_mean=closest)


@app.callback()
def _check_environment(
    ctx: typer.Context,
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    # Every command, including those that read Settings() themselves (dlq), refuses a bad
    # value in one line before it can surface as a traceback quoting the value. `--help` works
    # whatever the environment holds.
    if ctx.resilient_parsing or any(a in ("--help", "-h") for a in sys.argv[1:]):
        return
    _load_or_exit()


def _password(dsn: str) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(dsn).password


@app.command(
    epilog=exit_codes(
        {
            ExitCode.OK: "stopped by a signal",
            ExitCode.FAILED: "failed (logged, with a hint)",
            ExitCode.USAGE: "bad flag, setting or profiles file, or no API key",
        }
    )
)
def run(
    concurrency: Annotated[
        int | None,
        typer.Option(help=flag_help("concurrency", "Conversations in flight at most.")),
    ] = None,
    backend: Annotated[
        BackendName | None,
        typer.Option(help=flag_help("backend", "Backend for new conversations.")),
    ] = None,
    health_port: Annotated[
        int | None,
        typer.Option(help=flag_help("health_port", "Port of /livez, /readyz, /metrics; 0: any.")),
    ] = None,
) -> None:
    """Consume user messages and publish replies until SIGTERM or SIGINT.

    A flag given wins over its AW_* variable, which wins over the default.
    """
    from worker.service import WorkerService

    # Checked first: a bad flag is its one line, before any setting is acted on.
    flags = given_flags(
        {"concurrency": concurrency, "backend": backend, "health_port": health_port}
    )
    settings = _settings().model_copy(update=flags)
    if not settings.has_api_key:
        typer.echo(
            f"assistant-worker run: no OpenAI API key; set {' or '.join(API_KEY_VARIABLES)}",
            err=True,
        )
        raise typer.Exit(EXIT_BAD_SETTINGS)

    profiles = _profiles_or_exit(settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await WorkerService(settings, profiles).run(stop)

    _run_logged("worker", main, settings)


def _profiles_or_exit(settings: Settings) -> Profiles:
    from worker.profiles.config import profiles_of
    from worker.profiles.load import ProfilesError

    try:
        return profiles_of(settings)
    except ProfilesError as exc:
        typer.echo(f"assistant-worker: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None


def _run_logged(
    what: str, main: Callable[[], Coroutine[Any, Any, None]], settings: Settings
) -> None:
    """Runs `main`; a failure is logged (secrets scrubbed) instead of a raw traceback."""
    from worker.profiles.load import ProfilesError

    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings)) as runner:
            runner.run(main())
    except ProfilesError as exc:  # what sync recorded does not fit the profiles
        typer.echo(f"assistant-worker: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None
    except Exception as exc:  # noqa: BLE001 - the process ends here either way
        hint = _hint(exc, settings)
        structlog.get_logger("worker.ops.cli").error(f"{what}_failed", error=repr(exc), hint=hint)
        raise typer.Exit(ExitCode.FAILED) from None


def _loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if settings.event_loop is EventLoop.UVLOOP:
        import uvloop

        return uvloop.new_event_loop
    return None  # asyncio's own


def _hint(exc: Exception, settings: Settings) -> str | None:
    import asyncpg
    from aiormq.exceptions import ChannelPreconditionFailed

    from worker.startup import explain
    from worker.store.migrate import SchemaOutOfDate

    if isinstance(exc, SchemaOutOfDate):
        return "run `assistant-worker migrate` (the migrations Job, on Kubernetes) first"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return "the database does not exist yet: run `assistant-worker migrate`"
    if isinstance(exc, asyncpg.UndefinedTableError):
        return "the schema is missing or old: run `assistant-worker migrate`"
    if isinstance(exc, ChannelPreconditionFailed):
        return "a queue or exchange exists with other arguments than the worker declares"
    if isinstance(exc, FileNotFoundError):
        return f"a file the worker needs is missing ({exc.filename}): reinstall the package"
    return explain(
        exc, settings.amqp_url.get_secret_value(), settings.database_url.get_secret_value()
    )


@app.command(epilog=PLAIN_EXITS)
def migrate() -> None:
    """Create the database if needed and apply pending schema migrations."""
    from worker.store.migrate import migrate as apply

    settings = _settings()

    async def main() -> None:
        applied = await apply(settings.database_url.get_secret_value())
        for m in applied:
            typer.echo(f"applied {m.version:04d}_{m.name}")
        if not applied:
            typer.echo("database schema is up to date")

    _run_logged("migrate", main, settings)


app.add_typer(dlq_app, name="dlq")

conversations = typer.Typer(
    help="Operate on stored conversations.", epilog=PLAIN_EXITS, no_args_is_help=True
)
app.add_typer(conversations, name="conversations")


@conversations.command("move", epilog=PLAIN_EXITS)
def move_conversations(
    to: Annotated[BackendName, typer.Option(help="Backend to move conversations to.")],
    conversation: Annotated[
        list[str] | None, typer.Option(help="A conversation ID; repeat for several.")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Every conversation on another backend.")
    ] = False,
) -> None:
    """Move idle conversations to another backend (e.g. off the retired Assistants API).

    A thread's history cannot be carried over: the next message of a moved conversation starts
    a new thread or Conversation there. Conversations with work in progress are left alone; run
    the command again once they are idle.
    """
    from worker.store.postgres import open_store

    if not conversation and not all_:
        raise typer.BadParameter("name conversations with --conversation, or pass --all")
    settings = _settings()

    async def main() -> None:
        async with open_store(settings.database_url.get_secret_value()) as store:
            moved, busy = await store.move_conversations(to.value, conversation or None)
        typer.echo(
            f"moved {len(moved)} conversation(s) to {to.value}; {busy} busy, left as they are"
        )

    _run_logged("move", main, settings)


profiles = typer.Typer(
    help="Assistant profiles (AW_PROFILES_FILE).",
    epilog=exit_codes({ExitCode.OK: "valid", ExitCode.USAGE: "invalid, or bad usage"}),
    no_args_is_help=True,
)
app.add_typer(profiles, name="profiles")


@profiles.command(
    "check",
    epilog=exit_codes(
        {ExitCode.OK: "valid", ExitCode.USAGE: "not (one line names the profile and the key)"}
    ),
)
def check_profiles(
    file: Annotated[
        Path, typer.Argument(help="The profiles file (TOML), as AW_PROFILES_FILE would name it.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Validate a profiles file offline, as the worker would load it at start, and sum it up.

    Handlers are imported and secrets looked up in the environment; nothing is called.
    """
    from worker.ops.profiles_cli import check_profiles_file

    code = check_profiles_file(file, os.environ, sys.stdout, sys.stderr, as_json=as_json)
    raise typer.Exit(code)


# Settled events are the record that makes a redelivered duplicate harmless: keep them at
# least this long, well past any redelivery or replay of a message that was already answered.
PRUNE_MIN_AGE = timedelta(days=1)


@app.command(epilog=PLAIN_EXITS)
def prune(
    older_than: Annotated[
        str,
        typer.Option(help="Delete what was settled before this: an age such as 30d, or RFC 3339."),
    ],
    dry_run: Annotated[bool, typer.Option(help="Only count what would be deleted.")] = False,
    chunk: Annotated[int, typer.Option(min=1, help="Rows deleted per transaction.")] = 5000,
) -> None:
    """Delete old settled work: answered and dead-lettered events, finished batches and their
    runs, published outbox rows. Pending work and conversations (the thread mapping) are kept.

    A duplicate of a pruned event would be answered again, so the cutoff must be at least a
    day old; run it daily (deploy/kustomize/base/prune-cronjob.yaml does, on Kubernetes).
    """
    from worker.ops.when import parse_when
    from worker.store.postgres import open_store

    cutoff = parse_when(older_than, "--older-than")
    assert cutoff is not None
    if datetime.now(UTC) - cutoff < PRUNE_MIN_AGE:
        raise typer.BadParameter(
            "too recent: duplicates of events settled since then may still arrive; use at least 1d",
            param_hint="--older-than",
        )
    settings = _settings()

    def progress(table: str, count: int) -> None:
        if count:
            typer.echo(f"  {table}: deleted {count}", err=True)

    async def main() -> None:
        async with open_store(settings.database_url.get_secret_value()) as store:
            if dry_run:
                counts = await store.prunable(cutoff)
            else:
                files = await _prune_files(settings, store, cutoff, chunk, progress)
                rows = await store.prune(cutoff, chunk=chunk, on_chunk=progress)
                counts = {**rows, "files": files}
        verb = "would delete" if dry_run else "deleted"
        summary = ", ".join(f"{count} {table}" for table, count in counts.items())
        typer.echo(f"{verb} {summary} (settled before {cutoff.isoformat(timespec='seconds')})")

    _run_logged("prune", main, settings)


async def _prune_files(
    settings: Settings,
    store: Store,
    cutoff: datetime,
    chunk: int,
    progress: Callable[[str, int], None],
) -> int:
    """The worker's uploads for the events being pruned are deleted at the API first."""
    from worker.backends.files import Files
    from worker.ops.retention import prune_files
    from worker.service import make_client

    if not (await store.prunable(cutoff))["files"]:
        return 0
    if not settings.has_api_key:
        raise RuntimeError(
            "files the worker uploaded for these events must be deleted at the API first: "
            "set AW_OPENAI_API_KEY (or OPENAI_API_KEY)"
        )
    async with make_client(settings) as client:
        return await prune_files(store, Files(client), cutoff, chunk=chunk, on_chunk=progress)


def _require_standin(command: str) -> None:
    """The stand-in is a distribution of its own, left out of production installs."""
    if importlib.util.find_spec("standin") is None:
        typer.echo(
            f"assistant-worker {command}: needs the OpenAI stand-in, which production installs "
            "leave out; install it from a checkout with `pip install ./standin` "
            "(`make install` does)",
            err=True,
        )
        raise typer.Exit(ExitCode.USAGE)


@app.command(
    epilog=exit_codes(
        {ExitCode.OK: "stopped (Ctrl-C)", ExitCode.USAGE: "bad usage, or the stand-in missing"}
    )
)
def standin(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8900,
    run_duration_ms: Annotated[int, typer.Option(help="How long a run takes.")] = 200,
    queue_ms: Annotated[int, typer.Option(help="How long a run stays queued.")] = 20,
    poll_after_ms: Annotated[int, typer.Option(help="openai-poll-after-ms hint; 0 = none.")] = 500,
) -> None:
    """Serve the OpenAI stand-in (Assistants and Responses APIs) for tests and demos."""
    _require_standin("standin")
    from standin import StandInConfig, serve

    config = StandInConfig(
        run_duration_ms=run_duration_ms, queue_ms=queue_ms, poll_after_ms=poll_after_ms or None
    )
    typer.echo(f"OpenAI stand-in on http://{host}:{port}/v1 (Ctrl-C to stop)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, host, port))


@app.command(
    epilog=exit_codes(
        {
            ExitCode.OK: "every message answered",
            ExitCode.FAILED: "some were not",
            ExitCode.USAGE: "bad usage or setting, or the stand-in missing",
        }
    )
)
def demo(
    standin_port: Annotated[
        int, typer.Option(help="Port for the in-process stand-in; 0 = any.")
    ] = 0,
    timeout_s: Annotated[float, typer.Option(help="Give up after this long.")] = 60.0,
) -> None:
    """Start the stand-in and a worker, play a short helpdesk conversation, print the replies."""
    _require_standin("demo")
    from worker.ops.demo import play

    # Quiet by default so the conversation stands out; AW_LOG_LEVEL=info shows the worker's logs.
    settings = _settings(log_level=LogLevel.WARNING)
    ok = asyncio.run(play(settings, standin_port=standin_port, timeout_s=timeout_s))
    sys.exit(ExitCode.OK if ok else ExitCode.FAILED)


SYNC_EXITS = exit_codes(
    {
        ExitCode.OK: "in sync",
        ExitCode.FAILED: "something could not be synced (a line says what)",
        ExitCode.USAGE: "no profiles file, an invalid one, or no API key",
    }
)
assistants = typer.Typer(
    help="The API objects the profiles stand for (knowledge stores, assistants).",
    epilog=SYNC_EXITS,
    no_args_is_help=True,
)
app.add_typer(assistants, name="assistants")


@assistants.command("sync", epilog=SYNC_EXITS)
def sync_assistants(
    profiles_file: Annotated[
        Path | None, typer.Option(help="The profiles file (default: AW_PROFILES_FILE).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print what would change.")
    ] = False,
    backend: Annotated[
        BackendName | None,
        typer.Option(help="Make assistant objects for `assistants` (default: AW_BACKEND)."),
    ] = None,
) -> None:
    """Upload each profile's knowledge into a vector store of its own and, for the Assistants
    backend, create or update an assistant for each profile that names none; record their IDs,
    which the worker then uses. Run it after every change to the profiles or their knowledge.

    Idempotent: a second run changes nothing. Only what sync made (tagged `aw_profile`,
    `aw_managed`) is ever changed or deleted.
    """
    from worker.ops.sync_cli import sync_command

    settings = _settings()
    exit_code: list[int] = []

    async def main() -> None:
        code = await sync_command(settings, profiles_file, dry_run=dry_run, backend=backend)
        exit_code.append(code)

    _run_logged("sync", main, settings)
    raise typer.Exit(exit_code[0])


@app.command(
    epilog=exit_codes(
        {
            ExitCode.OK: "stopped by a signal",
            ExitCode.FAILED: "a failure (logged, with a hint)",
            ExitCode.USAGE: "no secret, an invalid one, or another invalid setting",
        }
    )
)
def webhooks() -> None:
    """Receive OpenAI's webhooks (a background response ended) at POST /webhooks/openai until
    SIGTERM or SIGINT, record each once in Postgres and wake the worker that owns the run.

    Needs AW_WEBHOOK_SECRET (or OPENAI_WEBHOOK_SECRET), and AW_WEBHOOK_SECRET_PREVIOUS while
    the secret is being rotated; listens on AW_WEBHOOK_HOST:AW_WEBHOOK_PORT, with `/livez`,
    `/readyz` and `/metrics` on the same port.
    """
    from worker.webhooks.receiver import WebhookService
    from worker.webhooks.verify import verifier_of

    settings = _settings()
    try:
        verifier = verifier_of(settings)
    except InvalidSettings as exc:
        typer.echo(f"assistant-worker webhooks: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await WebhookService(settings, verifier).run(stop)
        finally:
            verifier.close()

    _run_logged("webhooks", main, settings)


if __name__ == "__main__":
    app()
