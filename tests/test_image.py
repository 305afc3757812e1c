"""Offline checks that the image is built reproducibly: from the locks, in a cache-friendly order.

There is no Docker engine here, so the Dockerfile is read, not built (the parser is
tests/test_deploy.py's). What is checked:
- the locks: every package pinned with its hashes, and the runtime lock in agreement with
  pyproject.toml's dependencies (`make lock` regenerates it), for the image's Python;
- the Dockerfile: dependencies installed from the lock with `--require-hashes` before any source
  is copied, then the worker's own wheel with `--no-deps`, and nothing fetched without a hash;
- the build context: .dockerignore sends what the Dockerfile copies and nothing else;
- the working directory: writable in the image and an emptyDir in the manifests.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.test_deploy import (
    TARGETS,
    Instruction,
    Obj,
    all_containers,
    component,
    copy_paths,
    dockerfile_stages,
    dockerfile_user,
    final_stage,
    pod_specs,
    render,
)

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
MAKEFILE = ROOT / "Makefile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = "deploy/requirements.lock"
BUILD_LOCK = "deploy/build-requirements.lock"
# How uv annotates a package that pyproject.toml asks for by name.
DIRECT = "assistant-worker (pyproject.toml)"
# The image's platforms; the lock's markers are evaluated for both.
IMAGE_PLATFORMS = ("x86_64", "aarch64")
IMAGE_PYTHON = "3.11"


# --- the locks ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Locked:
    """One package of a lock: its pin, the hashes pip will accept, and who asked for it."""

    name: str  # canonical (PEP 503)
    version: str
    hashes: tuple[str, ...]
    marker: str | None
    required_by: frozenset[str]


_ENTRY = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(;(?P<marker>[^\\]+))?\\?$"
)
_HASH = re.compile(r"^--hash=sha256:(?P<digest>[0-9a-f]{64})\s*\\?$")
_VIA = re.compile(r"^#\s+via(\s+(?P<one>.+))?$")
_VIA_MORE = re.compile(r"^#\s{3,}(?P<more>\S.*)$")


@dataclass(slots=True)
class _Entry:
    name: str
    version: str
    marker: str | None
    hashes: list[str]
    via: set[str]

    def frozen(self) -> Locked:
        return Locked(
            canonicalize_name(self.name),
            self.version,
            tuple(self.hashes),
            self.marker.strip() if self.marker else None,
            frozenset(self.via),
        )


def _read_line(line: str, entries: list[_Entry], in_via: bool) -> bool:
    """Adds one line of a lock to `entries`; returns whether a `# via` list is open."""
    if entry := _ENTRY.match(line):
        entries.append(_Entry(entry["name"], entry["version"], entry["marker"], [], set()))
        return False
    if not entries:
        assert line.startswith("#"), f"a line before the first package: {line!r}"
        return False
    current = entries[-1]
    if digest := _HASH.match(line):
        current.hashes.append(digest["digest"])
        return False
    if via := _VIA.match(line):
        if via["one"]:
            current.via.add(via["one"].strip())
        return not via["one"]
    if in_via and (more := _VIA_MORE.match(line)):
        current.via.add(more["more"].strip())
        return True
    raise AssertionError(f"a line this test cannot read (is the lock hand-edited?): {line!r}")


def parse_lock(text: str) -> dict[str, Locked]:
    """A lock written by `uv pip compile --generate-hashes`, by canonical package name."""
    entries: list[_Entry] = []
    in_via = False
    for raw in text.splitlines():
        line = raw.strip()
        if line:
            in_via = _read_line(line, entries, in_via)
    names = [canonicalize_name(e.name) for e in entries]
    assert len(names) == len(set(names)), "a package is locked twice"
    return {locked.name: locked for locked in (e.frozen() for e in entries)}


@cache
def lock(path: str) -> dict[str, Locked]:
    return parse_lock((ROOT / path).read_text())


def image_environments() -> list[dict[str, str]]:
    """The marker environments of the image: CPython 3.11 on Linux, on each platform."""
    return [
        {
            "python_version": IMAGE_PYTHON,
            "python_full_version": f"{IMAGE_PYTHON}.0",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "sys_platform": "linux",
            "platform_system": "Linux",
            "os_name": "posix",
            "platform_machine": machine,
            "extra": "",
        }
        for machine in IMAGE_PLATFORMS
    ]


def applies_to_the_image(marker: Marker | None) -> bool:
    return marker is None or any(marker.evaluate(env) for env in image_environments())


def lock_disagreements(dependencies: Iterable[str], locked: dict[str, Locked]) -> list[str]:
    """How a lock fails what pyproject.toml asks for; empty when it agrees."""
    wanted = [Requirement(d) for d in dependencies]
    wanted = [r for r in wanted if applies_to_the_image(r.marker)]
    problems = []
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        if name not in locked:
            problems.append(f"{requirement} is not in the lock: run `make lock`")
        elif not requirement.specifier.contains(locked[name].version, prereleases=True):
            problems.append(
                f"{name}=={locked[name].version} is locked, pyproject.toml asks {requirement}"
            )
    asked = {canonicalize_name(r.name) for r in wanted}
    direct = sorted(n for n, entry in locked.items() if DIRECT in entry.required_by)
    problems += [
        f"{n} is locked for pyproject.toml, which no longer asks for it"
        for n in direct
        if n not in asked
    ]
    return problems


def pyproject() -> dict[str, object]:
    return tomllib.loads(PYPROJECT.read_text())


def runtime_dependencies() -> list[str]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    return list(project["dependencies"])


def build_requirements() -> list[str]:
    build_system = pyproject()["build-system"]
    assert isinstance(build_system, dict)
    return list(build_system["requires"])


def test_the_lock_agrees_with_pyprojects_runtime_dependencies() -> None:
    assert lock_disagreements(runtime_dependencies(), lock(LOCK)) == []


def test_the_lock_holds_no_dev_tool() -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    dev = {canonicalize_name(Requirement(d).name) for d in project["optional-dependencies"]["dev"]}
    runtime = {canonicalize_name(Requirement(d).name) for d in runtime_dependencies()}
    direct = {name for name, entry in lock(LOCK).items() if DIRECT in entry.required_by}
    assert direct == runtime
    assert not (direct & (dev - runtime)), "a dev extra is locked as a runtime dependency"


def test_a_dependency_missing_from_the_lock_or_locked_outside_its_range_is_caught() -> None:
    locked = lock(LOCK)
    dependencies = runtime_dependencies()
    added = [*dependencies, "opentelemetry-exporter-prometheus>=0.50b0"]
    assert lock_disagreements(added, locked) == [
        "opentelemetry-exporter-prometheus>=0.50b0 is not in the lock: run `make lock`"
    ]
    openai = next(d for d in dependencies if canonicalize_name(Requirement(d).name) == "openai")
    narrowed = [d for d in dependencies if d != openai]
    version = locked["openai"].version
    narrowed.append(f"openai>{version}")
    assert lock_disagreements(narrowed, locked) == [
        f"openai=={version} is locked, pyproject.toml asks openai>{version}"
    ]
    removed = [d for d in dependencies if d != openai]
    assert lock_disagreements(removed, locked) == [
        "openai is locked for pyproject.toml, which no longer asks for it"
    ]
    # A dependency only for another platform needs no pin in the image's lock.
    windows_only = [*dependencies, "pywin32>=306; sys_platform == 'win32'"]
    assert lock_disagreements(windows_only, locked) == []


@pytest.mark.parametrize("path", [LOCK, BUILD_LOCK])
def test_every_locked_package_is_pinned_with_its_hashes(path: str) -> None:
    locked = lock(path)
    assert locked, f"{path} locks nothing"
    unhashed = sorted(name for name, entry in locked.items() if not entry.hashes)
    assert not unhashed, f"{path}: pinned without a hash, so --require-hashes refuses: {unhashed}"
    header = (ROOT / path).read_text().splitlines()[:2]
    assert any("make lock" in line for line in header), f"{path} says it is made by `make lock`"


def test_the_build_lock_holds_the_build_backend() -> None:
    assert lock_disagreements(build_requirements(), lock(BUILD_LOCK)) == []


def test_the_parser_refuses_what_it_cannot_read() -> None:
    with pytest.raises(AssertionError, match="cannot read"):
        parse_lock("openai==3.60.0 \\\n    --hash=md5:0123\n")
    parsed = parse_lock(
        "# header\n"
        "colorama==0.4.6 ; sys_platform == 'win32' \\\n"
        f"    --hash=sha256:{'a' * 64}\n"
        "    # via\n"
        "    #   click\n"
        f"    #   {DIRECT}\n"
    )
    assert parsed["colorama"] == Locked(
        "colorama", "0.4.6", ("a" * 64,), "sys_platform == 'win32'", frozenset({"click", DIRECT})
    )


def lock_recipe() -> str:
    text = MAKEFILE.read_text()
    recipe = re.search(r"^lock:.*?\n((?:\t.*\n|\s*\n)+)", text, flags=re.MULTILINE)
    assert recipe, "the Makefile has no `lock` target"
    flags = re.search(r"^LOCK_FLAGS\s*:=\s*((?:.*\\\n)*.*)$", text, flags=re.MULTILINE)
    assert flags, "the Makefile defines no LOCK_FLAGS"
    return recipe.group(1).replace("$(LOCK_FLAGS)", flags.group(1))


def test_the_locks_are_compiled_for_the_images_python_and_platforms() -> None:
    global_args, _ = dockerfile_stages()
    base = global_args["PYTHON_IMAGE"].rsplit("/", 1)[-1]
    assert base.startswith(f"python:{IMAGE_PYTHON}-"), f"the image's Python is {base}"
    recipe = lock_recipe()
    assert f"--python-version {IMAGE_PYTHON}" in recipe
    assert "--generate-hashes" in recipe
    assert "--only-binary :all:" in recipe, "a lock the image's --only-binary can install"
    for machine in IMAGE_PLATFORMS:
        assert f"--python-platform {machine}-manylinux" in recipe, f"no resolution for {machine}"
    assert "-o $(LOCK)" in recipe
    assert "-o $(BUILD_LOCK)" in recipe
    assert re.search(rf"^LOCK\s*:=\s*{re.escape(LOCK)}$", MAKEFILE.read_text(), re.MULTILINE)
    assert re.search(
        rf"^BUILD_LOCK\s*:=\s*{re.escape(BUILD_LOCK)}$", MAKEFILE.read_text(), re.MULTILINE
    )


# --- the Dockerfile: locked dependencies first, then the source ---------------------------

# pip options that take a value, for telling values from positional arguments.
_PIP_VALUE_OPTIONS = {
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "--python",
    "-w",
    "--wheel-dir",
    "--only-binary",
    "--no-binary",
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-t",
    "--target",
    "--prefix",
    "--root",
}
_PIP_COMMANDS = {"install", "wheel", "download", "check"}


@dataclass(frozen=True, slots=True)
class PipCall:
    """One pip command inside a RUN: which pip, what it does, with which options."""

    index: int  # of the RUN's instruction in its stage
    order: tuple[int, int]  # (index, which command of that RUN), for ordering calls
    pip: str
    command: str
    options: dict[str, str]  # "--no-deps" -> "", "--only-binary" -> ":all:", "-r" -> the lock
    positional: tuple[str, ...]

    def has(self, *options: str) -> bool:
        return all(option in self.options for option in options)


def _pip_call(order: tuple[int, int], words: list[str]) -> PipCall:
    options: dict[str, str] = {}
    positional: list[str] = []
    command = ""
    rest = iter(words[1:])
    for word in rest:
        if word.startswith("-"):
            name, equals, value = word.partition("=")
            if name in _PIP_VALUE_OPTIONS and not equals:
                value = next(rest)
            options[name] = value
        elif not command and word in _PIP_COMMANDS:
            command = word
        else:
            positional.append(word)
    assert command, f"a pip call this test cannot read: {shlex.join(words)}"
    return PipCall(order[0], order, words[0], command, options, tuple(positional))


def shell_commands(run: str) -> Iterator[list[str]]:
    words: list[str] = []
    for word in shlex.split(run):
        if word in {"&&", ";", "||"}:
            yield words
            words = []
        else:
            words.append(word)
    yield words


def pip_calls(stage: list[Instruction]) -> list[PipCall]:
    calls = []
    for index, instruction in enumerate(stage):
        if instruction.keyword != "RUN":
            continue
        for number, words in enumerate(shell_commands(instruction.args)):
            if words and Path(words[0]).name in {"pip", "pip3"}:
                calls.append(_pip_call((index, number), words))
            else:
                assert "pip" not in words, (
                    f"line {instruction.line}: call pip as `pip`, so this test can read it"
                )
    return calls


def builder() -> list[Instruction]:
    _, stages = dockerfile_stages()
    return stages[0]


def workdir_at(stage: list[Instruction], index: int) -> str:
    workdirs = [i.args for i in stage[:index] if i.keyword == "WORKDIR"]
    return workdirs[-1] if workdirs else "/"


def copied_to(stage: list[Instruction], index: int, source: str) -> str:
    """Where the COPY before `index` put the context file `source`, relative to WORKDIR."""
    for number, instruction in enumerate(stage[:index]):
        if instruction.keyword != "COPY" or "from" in instruction.flags():
            continue
        sources, target = copy_paths(instruction)
        if source in sources:
            here = workdir_at(stage, number)
            path = (
                posixpath.join(here, target, Path(source).name) if target.endswith("/") else target
            )
            return posixpath.relpath(posixpath.join(here, path), workdir_at(stage, index))
    pytest.fail(f"{source} is not copied before the instruction that reads it")


def lock_install(calls: list[PipCall], path: str) -> PipCall:
    stage = builder()
    found = [
        c
        for c in calls
        if c.command == "install" and c.options.get("-r") == copied_to(stage, c.index, path)
    ]
    assert len(found) == 1, f"expected one pip install -r of {path}, found {len(found)}"
    return found[0]


def test_the_dependencies_are_installed_from_the_lock_with_hashes_before_any_source() -> None:
    stage = builder()
    install = lock_install(pip_calls(stage), LOCK)
    assert install.has("--require-hashes", "--no-deps")
    assert install.options.get("--only-binary") == ":all:", "wheels only: nothing is compiled"
    assert install.options.get("--python") == "/opt/venv/bin/python"
    before = [i for i in stage[: install.index] if i.keyword in {"COPY", "ADD"}]
    for instruction in before:
        sources, _ = copy_paths(instruction)
        assert set(sources) <= {LOCK, BUILD_LOCK}, (
            f"line {instruction.line}: {sources} copied before the dependencies are installed: "
            "every change there would rebuild that layer"
        )


def test_the_worker_is_built_by_the_locked_backend_and_installed_without_dependencies() -> None:
    stage = builder()
    calls = pip_calls(stage)
    backend = lock_install(calls, BUILD_LOCK)
    assert backend.has("--require-hashes", "--no-deps")
    assert backend.options.get("--only-binary") == ":all:"
    (wheel,) = [c for c in calls if c.command == "wheel"]
    assert wheel.pip == backend.pip, "the wheel is built where the locked setuptools is"
    assert wheel.has("--no-build-isolation", "--no-deps"), "an isolated build fetches setuptools"
    (worker,) = [c for c in calls if c.command == "install" and "-r" not in c.options]
    assert worker.has("--no-deps", "--no-index")
    assert worker.options.get("--python") == lock_install(calls, LOCK).options.get("--python")
    assert worker.positional == (posixpath.join(wheel.options["--wheel-dir"], "*.whl"),)
    last_copy = max(n for n, i in enumerate(stage) if i.keyword == "COPY")
    assert wheel.index > last_copy, "the wheel is built from the copied source"
    assert worker.order > wheel.order
    assert worker.order > lock_install(calls, LOCK).order


def test_every_pip_call_in_the_image_fetches_only_hashed_files() -> None:
    _, stages = dockerfile_stages()
    for stage in stages:
        for call in pip_calls(stage):
            hashed = "--require-hashes" in call.options and "-r" in call.options
            local = call.has("--no-index") or call.command == "check"
            built_here = call.command == "wheel" and call.has("--no-deps", "--no-build-isolation")
            assert hashed or local or built_here, f"unhashed: {call.pip} {call.command}"


def test_pip_check_proves_the_lock_satisfies_the_worker() -> None:
    calls = pip_calls(builder())
    (check,) = [c for c in calls if c.command == "check"]
    (worker,) = [c for c in calls if c.command == "install" and "-r" not in c.options]
    assert check.options.get("--python") == worker.options.get("--python")
    assert check.order > worker.order


def test_the_build_reads_the_locks_the_makefile_writes() -> None:
    sources = {s for i in builder() if i.keyword == "COPY" for s in copy_paths(i)[0]}
    assert {LOCK, BUILD_LOCK} <= sources
    for path in (LOCK, BUILD_LOCK):
        assert (ROOT / path).is_file(), f"{path} is missing: run `make lock`"


# --- the build context (.dockerignore) ----------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it (moby/patternmatcher): `*` and `?` within one
    path segment, `**` across any number of them, the pattern cleaned of a leading `/`."""
    cleaned = posixpath.normpath(pattern.strip().lstrip("/"))
    parts = []
    for piece in re.split(r"(\*\*/|/\*\*$|\*\*|\*|\?|\[[^\]]*\])", cleaned):
        if piece == "**/":
            parts.append("(?:.*/)?")
        elif piece == "/**":
            parts.append("(?:/.*)?")
        elif piece == "**":
            parts.append(".*")
        elif piece == "*":
            parts.append("[^/]*")
        elif piece == "?":
            parts.append("[^/]")
        elif piece.startswith("[") and piece.endswith("]"):
            parts.append("[^" + piece[2:] if piece.startswith("[!") else piece)
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


@dataclass(frozen=True, slots=True)
class IgnoreRule:
    regex: re.Pattern[str]
    keep: bool  # a `!` line: sent after all

    def matches(self, path: str) -> bool:
        """The path itself or one of its parent folders, as Docker matches."""
        segments = path.split("/")
        candidates = ("/".join(segments[: n + 1]) for n in range(len(segments)))
        return any(self.regex.fullmatch(candidate) for candidate in candidates)


def ignore_rules(text: str) -> list[IgnoreRule]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        rules.append(IgnoreRule(_pattern_regex(line.removeprefix("!")), keep))
    return rules


def sent(path: str, rules: list[IgnoreRule]) -> bool:
    """Whether `docker build` sends this path of the context: the last matching rule decides."""
    ignored = False
    for rule in rules:
        if rule.matches(path):
            ignored = not rule.keep
    return not ignored


def context_sources() -> set[str]:
    """What the Dockerfile's COPY and ADD read from the build context, as written there."""
    _, stages = dockerfile_stages()
    return {
        posixpath.normpath(source)
        for stage in stages
        for i in stage
        if i.keyword in {"COPY", "ADD"} and "from" not in i.flags()
        for source in copy_paths(i)[0]
    }


def read_by_the_build(path: str, sources: set[str]) -> bool:
    return any(path == s or path.startswith(s + "/") for s in sources)


def git_files(*args: str) -> list[str]:
    proc = subprocess.run(
        ["git", "ls-files", *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [line.rstrip("/") for line in proc.stdout.splitlines() if line]


def test_the_ignore_matcher_reads_patterns_as_docker_does() -> None:
    rules = ignore_rules("*\n!worker/\n**/__pycache__\n!deploy/a.lock\n/.env*\n")
    assert sent("worker/store/sql/queries.sql", rules)
    assert sent("worker", rules)
    assert not sent("worker/__pycache__/cli.cpython-311.pyc", rules)
    assert not sent("tests/test_image.py", rules)
    assert not sent("deploy/Dockerfile", rules)
    assert sent("deploy/a.lock", rules)
    assert not sent(".env.local", rules)
    assert not sent("workers/x.py", rules), "`worker/` is that folder, not a prefix"


def test_the_context_sends_what_the_dockerfile_copies_and_nothing_else() -> None:
    rules = ignore_rules(DOCKERIGNORE.read_text())
    sources = context_sources()
    tracked = git_files()
    for source in sources:
        assert any(read_by_the_build(f, {source}) for f in tracked), f"COPY {source}: untracked"
    wrong = [f for f in tracked if sent(f, rules) != read_by_the_build(f, sources)]
    assert not wrong, (
        "sent but never copied, or copied but not sent (.dockerignore and the Dockerfile "
        f"disagree): {wrong[:20]}"
    )


def test_the_context_leaves_out_local_state_and_generated_files() -> None:
    rules = ignore_rules(DOCKERIGNORE.read_text())
    ignored_here = git_files("--others", "--ignored", "--exclude-standard", "--directory")
    samples = [
        ".git/HEAD",
        ".venv/bin/python",
        ".venv/tools/checkov/bin/checkov",
        ".env",
        "worker/__pycache__/cli.cpython-311.pyc",
        "worker/store/__pycache__/store.cpython-311.pyc",
        "assistant_worker.egg-info/PKG-INFO",
        "build/lib/worker/cli.py",
    ]
    leaks = [path for path in [*ignored_here, *samples] if sent(path, rules)]
    assert not leaks, f"sent to the builder: {leaks}"


# --- the working directory ----------------------------------------------------------------

# The base's pods (the worker, the migrations Job, the prune CronJob) run the commands operators
# run too (`kubectl exec`); the receiver and the stand-in are servers nobody execs into.
WORKDIR_COMPONENTS = {"worker", "migrations", "prune"}


def image_workdir() -> str:
    workdirs = [i.args for i in final_stage() if i.keyword == "WORKDIR"]
    assert workdirs, "the image's working directory would be `/`, read-only in the pods"
    workdir = workdirs[-1]
    assert workdir.startswith("/"), "a relative WORKDIR depends on the one before it"
    assert workdir != "/"
    return workdir


def test_the_images_working_directory_belongs_to_its_user() -> None:
    workdir = image_workdir()
    uid, gid = dockerfile_user()
    created = [
        words
        for i in final_stage()
        if i.keyword == "RUN"
        for words in shell_commands(i.args)
        if words[:2] == ["install", "-d"] and workdir in words
    ]
    assert len(created) == 1, f"{workdir} is created once, with its owner"
    words = created[0]
    assert words[words.index("-o") + 1] == str(uid)
    assert words[words.index("-g") + 1] == str(gid if gid is not None else uid)


def pods_with_workdir(target: str) -> Iterator[tuple[str, Obj]]:
    objects = {f"{o['kind']}/{o['metadata']['name']}": o for o in render(target)}
    for name, pod in pod_specs(target):
        if component(objects[name]) in WORKDIR_COMPONENTS:
            yield name, pod


@pytest.mark.parametrize("target", TARGETS)
def test_the_working_directory_is_a_writable_empty_dir_in_every_pod(target: str) -> None:
    workdir = image_workdir()
    checked = 0
    for name, pod in pods_with_workdir(target):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in all_containers(pod):
            mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == workdir]
            assert len(mounts) == 1, f"{target} {name}: nothing mounted at {workdir}"
            assert not mounts[0].get("readOnly", False), f"{target} {name}: mounted read-only"
            volume = volumes[mounts[0]["name"]]
            assert "emptyDir" in volume, f"{target} {name}: {workdir} is not an emptyDir"
            assert volume["emptyDir"].get("sizeLimit"), "a runaway export must not fill the node"
            sc = container.get("securityContext") or {}
            assert sc.get("readOnlyRootFilesystem") is True, f"{target} {name}"
            checked += 1
    assert checked == len(WORKDIR_COMPONENTS), f"{target}: expected one pod per component"


# --- the release is pinned by digest ------------------------------------------------------

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def test_production_runs_the_image_by_digest() -> None:
    images = {
        container["image"]
        for _, pod in pod_specs("production")
        for container in all_containers(pod)
    }
    assert images, "production runs no container"
    by_tag = sorted(image for image in images if not DIGEST.search(image))
    assert not by_tag, f"a tag can be pushed again; a digest cannot: {by_tag}"
