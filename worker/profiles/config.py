"""Which profiles a process runs with: the file AW_PROFILES_FILE names, or the shorthand."""

from __future__ import annotations

import os
from collections.abc import Mapping

from worker.profiles.load import load_profiles, shorthand_profiles
from worker.profiles.model import Profiles
from worker.relay.http_tools import HttpTool
from worker.settings import Settings


def profiles_of(settings: Settings, environ: Mapping[str, str] | None = None) -> Profiles:
    """Read once at start; raises ProfilesError (one line naming profile and key)."""
    if settings.profiles_file is None:
        return shorthand_profiles(settings.model, settings.instructions)
    return load_profiles(settings.profiles_file, os.environ if environ is None else environ)


async def close_tools(profiles: Profiles) -> None:
    """Closes what the profiles' handlers hold open (the HTTP tools' connections)."""
    for profile in profiles.profiles.values():
        for tool in profile.tools:
            if isinstance(tool.handler, HttpTool):
                await tool.handler.aclose()
