"""Which profile answers an event: the one it names, else its conversation's, else the first
route that matches it, else the default."""

from __future__ import annotations

import re

from worker.events import UserMessage
from worker.profiles.model import Profiles, Route

# The event fields a route may test (schemas/profiles.v1.json allows only these).
AUTHOR_ID = "author.id"
METADATA_PREFIX = "metadata."
# As the schemas' profile names: a name of another form is not quoted back.
_PROFILE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def choose_profile(
    profiles: Profiles, message: UserMessage, *, conversation_profile: str | None
) -> str:
    """The name of the profile that answers `message`; `conversation_profile` is the one its
    conversation recorded at first contact, if any. The name may be unknown (an event's own
    or one recorded before the profiles changed): the caller checks it is in `profiles`."""
    if message.profile is not None:
        return message.profile
    if conversation_profile is not None:
        return conversation_profile
    route = next((r for r in profiles.routes if matches(r, message)), None)
    return profiles.default if route is None else route.profile


def matches(route: Route, message: UserMessage) -> bool:
    """Whether every field the route tests has one of the values it accepts."""
    return all(_field(message, key) in accepted for key, accepted in route.when.items())


def _field(message: UserMessage, key: str) -> str | None:
    if key == AUTHOR_ID:
        return None if message.author is None else message.author.id
    return message.metadata.get(key.removeprefix(METADATA_PREFIX))


def unknown_profile_error(profiles: Profiles, name: str) -> str:
    """The one-line refusal of an event naming a profile that does not exist."""
    shown = repr(name) if _PROFILE_NAME.fullmatch(name) else f"(a name of {len(name)} characters)"
    return f"unknown profile {shown}; the profiles are {', '.join(sorted(profiles.profiles))}"
