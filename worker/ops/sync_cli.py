"""`assistant-worker assistants sync`: what it prints (a line per step, as it is taken, a progress
bar over the uploads on a terminal, a summary) and how it exits.

Exit codes: 0 all in sync (or, for a dry run, planned); 1 something could not be synced (a line
says what; the rest was); 2 it cannot start as told: no profiles file, an invalid one, no API
key (as for a bad setting).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import asyncpg
import openai
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from worker.errors import ApiError
from worker.profiles.load import ProfilesError, load_profiles
from worker.profiles.model import Profiles
from worker.profiles.sync import (
    Document,
    Level,
    Outcome,
    Sync,
    SyncApi,
    api_problem,
    leftovers,
    summary,
)
from worker.profiles.synced import SyncedObjects
from worker.settings import API_KEY_VARIABLES, BackendName, Settings
from worker.store.migrate import check_schema

EXIT_SYNCED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
COMMAND = "assistant-worker assistants sync"
_STYLES = {Level.INFO: "", Level.WARNING: "yellow", Level.ERROR: "red"}


async def sync_command(
    settings: Settings,
    profiles_file: Path | None,
    *,
    dry_run: bool,
    backend: BackendName | None,
    out: Console | None = None,
    err: Console | None = None,
) -> int:
    """Syncs the profiles of `profiles_file` (else AW_PROFILES_FILE) and returns the exit code.
    Assistant objects are made for `backend` (else AW_BACKEND) assistants only; knowledge is
    synced for both. Database failures are raised (the command logs them with a hint)."""
    out = out or _console(sys.stdout)
    err = err or _console(sys.stderr)
    path = profiles_file or settings.profiles_file
    if path is None:
        err.print(f"{COMMAND}: no profiles file: pass --profiles-file or set AW_PROFILES_FILE")
        return EXIT_USAGE
    if not settings.has_api_key:
        err.print(f"{COMMAND}: no OpenAI API key; set {' or '.join(API_KEY_VARIABLES)}")
        return EXIT_USAGE
    try:
        profiles = load_profiles(path, os.environ)
    except ProfilesError as exc:
        err.print(f"{COMMAND}: {exc}")
        return EXIT_USAGE
    assistants = (backend or settings.backend) == BackendName.ASSISTANTS
    dsn = settings.database_url.get_secret_value()
    await check_schema(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        records = SyncedObjects(conn)
        if not dry_run and not await records.try_lock():
            err.print(f"{COMMAND}: another sync is running on this database; try again later")
            return EXIT_FAILED
        async with _client(settings) as client:
            listener = PrintedSync(out, settings)
            sync = Sync(SyncApi(client), records, listener, assistants=assistants, dry_run=dry_run)
            return await _run(sync, profiles, listener, dry_run, err)
    finally:
        await conn.close()


async def _run(
    sync: Sync, profiles: Profiles, listener: PrintedSync, dry_run: bool, err: Console
) -> int:
    try:
        observed = await sync.observe()
        plans = await sync.plan(profiles, observed)
    except ApiError as exc:
        err.print(f"{COMMAND}: {listener.scrubbed(api_problem(exc))}")
        return EXIT_FAILED
    upload_bytes = 0 if dry_run else sum(plan.upload_bytes for plan in plans)
    with listener.progress(upload_bytes):
        await sync.walk(plans, leftovers(profiles, observed))
    listener.out.print(summary(sync.counts, len(plans), dry_run))
    return EXIT_FAILED if sync.counts[Outcome.ERROR] else EXIT_SYNCED


def _client(settings: Settings) -> openai.AsyncOpenAI:
    # Unlike the worker's, this client keeps the SDK's retries: nothing else retries a command.
    return openai.AsyncOpenAI(
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key.get_secret_value(),
        timeout=settings.openai_timeout_s,
    )


def _console(stream: TextIO) -> Console:
    # Off a terminal (pipes, files) lines are not folded at 80 columns, and there are no colours.
    return Console(file=stream, width=None if stream.isatty() else 240, highlight=False)


class PrintedSync:
    """Prints each step as `profile: text`, and the uploads' progress in bytes on a terminal."""

    def __init__(self, out: Console, settings: Settings) -> None:
        self.out = out
        self._secret = settings.openai_api_key.get_secret_value()
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def said(self, profile: str, level: Level, text: str) -> None:
        label = "" if level is Level.INFO else f"{level.value}: "
        line = Text(f"{profile}: {label}{self.scrubbed(text)}", style=_STYLES[level])
        self.out.print(line, soft_wrap=True)

    def upload_started(self, document: Document) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=document.key)

    def upload_finished(self, document: Document) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, document.size)

    def scrubbed(self, text: str) -> str:
        """The text without the API key, should an error message ever quote it."""
        return text.replace(self._secret, "***") if self._secret else text

    @contextmanager
    def progress(self, total_bytes: int) -> Iterator[None]:
        if not total_bytes or not self.out.is_terminal:
            yield
            return
        columns = (
            TextColumn("uploading {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.out, transient=True) as bar:
            self._bar, self._task = bar, bar.add_task("", total=total_bytes)
            try:
                yield
            finally:
                self._bar = self._task = None
