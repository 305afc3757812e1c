"""Which profiles a process runs with: the file AW_PROFILES_FILE names, or the shorthand."""

from __future__ import annotations

import os
from collections.abc import Mapping

from worker.profiles.load import ProfilesError, load_profiles, shorthand_profiles
from worker.profiles.model import Profiles
from worker.relay.http_tools import HttpTool
from worker.settings import BackendName, Settings


def profiles_of(settings: Settings, environ: Mapping[str, str] | None = None) -> Profiles:
    """Read once at start; raises ProfilesError (one line naming profile and key)."""
    if settings.profiles_file is None:
        return shorthand_profiles(settings.model, settings.instructions)
    profiles = load_profiles(settings.profiles_file, os.environ if environ is None else environ)
    if settings.backend is BackendName.ASSISTANTS:
        _check_assistants(profiles, f"profiles file {settings.profiles_file}")
    return profiles


def _check_assistants(profiles: Profiles, origin: str) -> None:
    """What the Assistants API cannot carry is refused, not dropped: it has no web search or
    MCP tool, and searches one vector store per thread."""
    for name, profile in profiles.profiles.items():
        hosted = profile.hosted
        beyond = hosted.beyond_assistants()
        if beyond:  # the first is named, as any other refusal names one key
            raise ProfilesError(origin, _NO_ASSISTANTS % _NAMED[beyond[0]], name, beyond[0])
        search = hosted.file_search
        if search is not None and len(search.vector_store_ids) + bool(search.knowledge) > 1:
            raise ProfilesError(
                origin,
                "the Assistants API searches one vector store per thread: name one store, "
                "or knowledge, not both (or use AW_BACKEND=responses)",
                name,
                "file_search",
            )


_NO_ASSISTANTS = "the Assistants API has no %s (AW_BACKEND=assistants); use AW_BACKEND=responses"
_NAMED = {"web_search": "web search", "mcp": "MCP tool"}


async def close_tools(profiles: Profiles) -> None:
    """Closes what the profiles' handlers hold open (the HTTP tools' connections)."""
    for profile in profiles.profiles.values():
        for tool in profile.tools:
            if isinstance(tool.handler, HttpTool):
                await tool.handler.aclose()
