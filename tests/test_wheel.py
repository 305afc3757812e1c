"""`pip install .` gives a worker that answers: the wheel built from this checkout, installed
into a fresh virtualenv and run from there, migrates a new database and replies to a message.

The wheel is built from a copy of the checkout (generated state left out), not in place: an
in-place build writes build/ and *.egg-info into a tree other people work in, and setuptools
keeps stale files in build/lib, so a deleted module or migration would still ship.

The fresh virtualenv gets the wheel with `pip install --no-deps` and borrows its dependencies
from the dev virtualenv: a .pth file in its site-packages appends the dev venv's site-packages
to sys.path. Installing the dependencies from an index on every run would take longer than the
rest of the test. The borrowing is safe for what is tested here because Python processes .pth
files only in site directories, not in directories a .pth line appends: the dev venv's
`__editable__` finder, which would map `worker` to this checkout, is never installed, so
`worker` can only come from the wheel. The tests check that (`worker.__file__` is inside the
fresh venv) rather than trust it. What this does not catch: a runtime import of a package that
only the dev extras install.

Every command runs with the fresh venv's executables, from a directory outside the checkout,
with `python -I` or the environment equivalent of it (the console script cannot take the flag).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aio_pika.abc import AbstractChannel

from tests.support import admin_sql, dsn_for, publish, replies_for, worker_env
from tests.test_process import WorkerProcess
from worker.settings import Settings, Topology

ROOT = Path(__file__).resolve().parent.parent
# Local and generated state: never an input of a build.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".demo"
)
BUILD_TIMEOUT_S = 30


@dataclass(frozen=True, slots=True)
class Installed:
    """A wheel built from the checkout and a fresh virtualenv holding it."""

    wheel: Path
    venv: Path
    workdir: Path  # outside the checkout: the cwd of every command run from the venv

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` as `python -I` would see it, with this venv first on PATH."""
        kept = {k: v for k, v in base.items() if not k.startswith("PYTHON")}
        path = f"{self.venv / 'bin'}{os.pathsep}{kept.get('PATH', os.defpath)}"
        return kept | {
            "PYTHONNOUSERSITE": "1",
            "PYTHONSAFEPATH": "1",
            "VIRTUAL_ENV": str(self.venv),
            "PATH": path,
        }

    def python(self, code: str) -> str:
        """Stdout of `<venv>/bin/python -I -c CODE`."""
        return checked(self.bin("python"), "-I", "-c", code, cwd=self.workdir)


def checked(*command: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def build_wheel(out: Path) -> Path:
    source = out / "source"
    # symlinks=True keeps worker/schemas a link to ../schemas, as in the checkout.
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCE)
    checked(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, source, cwd=out)
    (wheel,) = out.glob("*.whl")
    return wheel


def make_venv(venv: Path, wheel: Path, cwd: Path) -> None:
    checked(sys.executable, "-m", "venv", "--without-pip", venv, cwd=cwd)
    python = venv / "bin" / "python"
    install = ("install", "--no-deps", "--no-cache-dir", "-q", wheel)
    checked(sys.executable, "-m", "pip", "--python", python, *install, cwd=cwd)
    purelib = 'import sysconfig; print(sysconfig.get_path("purelib"))'
    site_packages = Path(checked(python, "-I", "-c", purelib, cwd=cwd).strip())
    dev_site_packages = sysconfig.get_path("purelib")
    (site_packages / "dev_venv_dependencies.pth").write_text(dev_site_packages + "\n")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    workdir = tmp_path_factory.mktemp("wheel")
    assert not workdir.is_relative_to(ROOT), "the commands must run outside the checkout"
    wheel = build_wheel(workdir)
    make_venv(workdir / "venv", wheel, workdir)
    return Installed(wheel, workdir / "venv", workdir)


def test_the_wheel_carries_the_schemas_and_the_sql(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    schemas = {p.name for p in (ROOT / "schemas").iterdir() if p.suffix in {".json", ".yaml"}}
    assert {"user_message.v1.json", "assistant_reply.v1.json", "asyncapi.yaml"} <= schemas
    migrations = {p.name for p in (ROOT / "worker" / "store" / "sql" / "migrations").glob("*.sql")}
    assert len(migrations) >= 4
    expected = {
        *(f"worker/schemas/{name}" for name in schemas),
        "worker/store/sql/queries.sql",
        "worker/store/sql/schema.sql",
        *(f"worker/store/sql/migrations/{name}" for name in migrations),
    }
    assert sorted(expected - names) == []


def test_the_wheel_leaves_the_stand_in_out(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
    assert {name.split("/")[0] for name in names} == {"worker", "assistant_worker-0.1.0.dist-info"}
    assert [name for name in names if "standin" in name] == []


def test_the_stand_in_commands_say_what_to_install_where_it_is_missing(
    installed: Installed,
) -> None:
    for command in ("demo", "standin"):
        done = subprocess.run(
            [installed.bin("assistant-worker"), command],
            cwd=installed.workdir,
            env=installed.env(dict(os.environ)),
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert done.stdout == ""
        [line] = done.stderr.splitlines()
        assert line.startswith(f"assistant-worker {command}: needs the OpenAI stand-in")
        assert "pip install ./standin" in line


def test_the_stand_in_is_a_distribution_of_its_own(tmp_path: Path) -> None:
    source = tmp_path / "standin"
    shutil.copytree(ROOT / "standin", source, ignore=NOT_SOURCE)
    checked(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-q",
        "-w",
        tmp_path,
        source,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("assistant_worker_standin-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    modules = {p.name for p in (ROOT / "standin").glob("*.py")}
    assert {f"standin/{name}" for name in modules} <= set(names)
    assert {name.split("/")[0] for name in names} == {
        "standin",
        "assistant_worker_standin-0.1.0.dist-info",
    }


VALIDATES = """
import worker
from worker.errors import InvalidEvent
from worker.events import parse_user_message, validator

print(worker.__file__)
validator("assistant_reply.v1")
message = parse_user_message(b'{"event_id": "e-1", "conversation_id": "c-1", "text": "hi"}')
print(message.text)
try:
    parse_user_message(b'{"event_id": "e-2", "conversation_id": "c-1"}')
except InvalidEvent as exc:
    print(exc.reason.value)
"""


def test_the_installed_package_validates_events(installed: Installed) -> None:
    module, accepted, refused = installed.python(VALIDATES).splitlines()
    assert Path(module).is_relative_to(installed.venv), f"worker imported from {module}"
    assert accepted == "hi"
    assert refused == "schema_invalid"


def test_the_installed_package_checks_profiles_and_ships_its_tools(installed: Installed) -> None:
    # The package's own entry point (current_time) resolves from the wheel's metadata, and the
    # profiles schema is found inside the installed package.
    profiles = installed.workdir / "profiles.toml"
    profiles.write_text(
        '[profiles.care]\nmodel = "gpt-4o-mini"\ninstructions = "Help."\n'
        '[profiles.care.tools.current_time]\nentry_point = "current_time"\n'
    )
    done = subprocess.run(
        [str(installed.bin("assistant-worker")), "profiles", "check", str(profiles)],
        cwd=installed.workdir,
        env=installed.env(dict(os.environ)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "current_time (entry_point)" in done.stdout
    assert done.stdout.rstrip().endswith("valid")


@pytest.fixture
async def empty_database_url() -> AsyncIterator[str]:
    """A database name nobody created: `migrate` must create it and apply every migration."""
    name = f"aw_wheel_{uuid.uuid4().hex[:12]}"
    yield dsn_for(name)
    await admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for proc in started:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_the_installed_worker_migrates_and_answers(
    installed: Installed,
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    empty_database_url: str,
    processes: list[asyncio.subprocess.Process],
) -> None:
    # worker_env names AW_OPENAI_BASE_URL and AW_OPENAI_API_KEY (the stand-in's), so the worker
    # neither refuses to start for want of a key nor goes to OpenAI.
    env = installed.env(worker_env(settings, AW_DATABASE_URL=empty_database_url))

    async def start(*command: str | Path) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *command,
            env=env,
            cwd=installed.workdir,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        processes.append(proc)
        return proc

    # The interpreter the console script runs, with the same environment and directory.
    where = await start(installed.bin("python"), "-c", "import worker; print(worker.__file__)")
    module = (await where.communicate())[0].decode().strip()
    assert Path(module).is_relative_to(installed.venv), f"worker imported from {module}"

    migrate = await start(installed.bin("assistant-worker"), "migrate")
    out, err = await asyncio.wait_for(migrate.communicate(), 20)
    assert migrate.returncode == 0, err.decode()
    names = sorted(p.stem for p in (ROOT / "worker" / "store" / "sql" / "migrations").glob("*.sql"))
    assert out.decode().split() == [word for name in names for word in ("applied", name)]

    worker = WorkerProcess(await start(installed.bin("assistant-worker"), "run"))
    await worker.wait_for_log("worker_started")
    event = await publish(channel, topology, conversation_id="c-wheel", text="hello wheel")
    [reply] = await replies_for(channel, topology, {event["event_id"]})
    assert reply["status"] == "completed"
    assert reply["text"] == "Echo: hello wheel"
    worker.proc.send_signal(signal.SIGTERM)
    assert await worker.finish() == 0, "".join(worker.lines)
