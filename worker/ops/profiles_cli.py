"""`assistant-worker profiles check FILE`: a profiles file validated offline, as the worker
would load it at start, and summed up.

Exit codes: 0 the file is valid; 2 it is not (as for a bad setting: the operator has to change
what the worker is started with).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from worker.ops.conventions import UNBOUNDED_WIDTH
from worker.profiles.load import ProfilesError, knowledge_files, load_profiles
from worker.profiles.model import HostedTools, Profile, Profiles, Route

EXIT_VALID, EXIT_INVALID = 0, 2


def check_profiles_file(
    path: Path, environ: Mapping[str, str], out: TextIO, err: TextIO, *, as_json: bool = False
) -> int:
    """Loads the profiles file and prints a table of its profiles to `out` (or the same as
    JSON), or to `err` the one line saying what is wrong with it; returns the exit code. Calls
    no network service: handlers are imported and secrets read from `environ`, nothing more."""
    try:
        profiles = load_profiles(path, environ)
    except ProfilesError as exc:
        err.write(f"{exc}\n")
        return EXIT_INVALID
    if as_json:
        out.write(json.dumps(summary_json(path, profiles), indent=2) + "\n")
        return EXIT_VALID
    # Off a terminal (pipes, files) lines are not folded at 80 columns, and there are no colours.
    console = Console(file=out, width=None if out.isatty() else UNBOUNDED_WIDTH, highlight=False)
    console.print(summary(profiles))
    out.write(f"profiles file {path}: {_count(len(profiles.profiles), 'profile')}, ")
    out.write(f"{_count(len(profiles.routes), 'route')}, default {profiles.default!r}: valid\n")
    return EXIT_VALID


def summary(profiles: Profiles) -> Table:
    """One row a profile: its model, function tools, hosted tools, knowledge and routes."""
    table = Table("profile", "model", "function tools", "hosted tools", "knowledge", "routes")
    for name, profile in profiles.profiles.items():
        routes = [r for r in profiles.routes if r.profile == name]
        table.add_row(
            *(
                Text(cell)
                for cell in (
                    f"{name} (default)" if name == profiles.default else name,
                    profile.model,
                    _function_tools(profile),
                    _hosted_tools(profile.hosted),
                    _knowledge(profile.hosted),
                    _lines(_route(route) for route in routes),
                )
            )
        )
    return table


def summary_json(path: Path, profiles: Profiles) -> dict[str, Any]:
    """What the table says, as values: no instructions, URLs or secrets."""
    return {
        "file": str(path),
        "valid": True,
        "default": profiles.default,
        "profiles": [_profile_json(profile) for profile in profiles.profiles.values()],
        "routes": [{"profile": r.profile, "when": {**r.when}} for r in profiles.routes],
    }


def _profile_json(profile: Profile) -> dict[str, Any]:
    hosted = profile.hosted
    search = hosted.file_search
    return {
        "name": profile.name,
        "model": profile.model,
        "function_tools": [{"name": t.name, "handler": str(t.handler_kind)} for t in profile.tools],
        "hosted_tools": {
            "file_search": None
            if search is None
            else {
                "vector_stores": len(search.vector_store_ids),
                "knowledge_files": len(knowledge_files(search.knowledge)),
            },
            "code_interpreter": hosted.code_interpreter,
            "web_search": hosted.web_search,
            "mcp": [{"label": m.label, "unapproved": str(m.unapproved)} for m in hosted.mcp],
        },
    }


def _function_tools(profile: Profile) -> str:
    return _lines(f"{tool.name} ({tool.handler_kind})" for tool in profile.tools)


def _hosted_tools(hosted: HostedTools) -> str:
    named = []
    if hosted.file_search is not None:
        stores = len(hosted.file_search.vector_store_ids)
        named.append(f"file_search ({_count(stores, 'vector store')})")
    if hosted.code_interpreter:
        named.append("code_interpreter")
    if hosted.web_search:
        named.append("web_search")
    named += [f"mcp {server.label} ({server.unapproved})" for server in hosted.mcp]
    return _lines(named)


def _knowledge(hosted: HostedTools) -> str:
    if hosted.file_search is None or not hosted.file_search.knowledge:
        return "-"
    return _count(len(knowledge_files(hosted.file_search.knowledge)), "file")


def _route(route: Route) -> str:
    return " and ".join(
        f"{key} = {values[0]}" if len(values) == 1 else f"{key} in {', '.join(values)}"
        for key, values in route.when.items()
    )


def _lines(items: Iterable[str]) -> str:
    return "\n".join(items) or "-"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
