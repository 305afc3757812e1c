"""Command-line flags for settings: a flag given beats its AW_* variable, which beats the default.

A flag's value is checked against the setting's own declaration (worker/settings.py), so a
range or a choice is declared once, and a bad value is refused naming the flag, not the
variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import typer
from pydantic import TypeAdapter, ValidationError

from worker.settings import Settings


def flag_of(field: str) -> str:
    return "--" + field.replace("_", "-")


def flag_help(field: str, what: str) -> str:
    """A flag's help: what it sets, its variable and the default, read from the declaration."""
    default = Settings.model_fields[field].default
    shown = getattr(default, "value", default)
    return f"{what} [default: AW_{field.upper()}, else {shown}]"


def given_flags(flags: Mapping[str, object]) -> dict[str, Any]:
    """The flags that were given (not None), each checked as its setting would be; for
    `Settings.model_copy(update=...)` on the settings from the environment."""
    return {field: _checked(field, value) for field, value in flags.items() if value is not None}


def _checked(field: str, value: object) -> Any:
    try:
        return _adapter(field).validate_python(value)
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]["msg"].removeprefix("Input ")
        raise typer.BadParameter(f"{value!r} {problem}", param_hint=flag_of(field)) from None


@cache
def _adapter(field: str) -> TypeAdapter[Any]:
    # The field's type with its constraints (Annotated[int, Gt(0)] and the like).
    annotation: Any = Settings.model_fields[field].rebuild_annotation()
    return TypeAdapter(annotation)
