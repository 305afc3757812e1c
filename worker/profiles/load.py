"""Reading the profiles file (AW_PROFILES_FILE): TOML checked against schemas/profiles.v1.json,
then every reference resolved (instructions files, knowledge, handlers, secrets, profile names),
so that profiles which cannot work stop the worker at start, in one line naming the profile and
the key, instead of failing a conversation later.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from worker.events import validator
from worker.profiles.model import (
    DEFAULT_TOOL_TIMEOUT_S,
    FileSearch,
    FunctionTool,
    Generation,
    HandlerKind,
    HostedTools,
    McpServer,
    Profile,
    Profiles,
    Route,
    Unapproved,
)
from worker.relay.http_tools import HttpTool
from worker.relay.tools import HANDOFF_TOOL
from worker.toolkit import Grant, ToolHandler, ToolSpec

SCHEMA = "profiles.v1"
TOOLS_GROUP = "assistant_worker.tools"
# The profile AW_MODEL and AW_INSTRUCTIONS make when there is no profiles file.
SHORTHAND_PROFILE = "default"
_SHORTHAND_ORIGIN = "AW_MODEL and AW_INSTRUCTIONS"
_SHORTHAND_TOOLS = ("current_time",)
# An import error's text goes into the one line; a long one is cut.
_DETAIL_MAX = 200


class ProfilesError(ValueError):
    """The profiles cannot be used as written. The message is one line: the file, the profile
    and the dotted key, then what is wrong; it never quotes a secret."""

    def __init__(self, origin: str, problem: str, profile: str | None, key: str) -> None:
        where = [f"profile {profile!r}"] if profile is not None else []
        where += [f"key {key}"] if key else []
        located = f"{origin}: {', '.join(where)}" if where else origin
        super().__init__(f"{located}: {problem}")
        self.profile = profile
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class _Place:
    """A place in the profiles being read: what an error about it names, and what resolving a
    value there needs (the folder relative paths start from, the environment)."""

    origin: str
    folder: Path
    environ: Mapping[str, str]
    profile: str | None = None
    key: tuple[str | int, ...] = ()

    def at(self, *parts: str | int) -> _Place:
        return replace(self, key=self.key + parts)

    def fail(self, problem: str) -> ProfilesError:
        return ProfilesError(self.origin, problem, self.profile, _dotted(self.key))


def _dotted(parts: Sequence[str | int]) -> str:
    """A key path as the file would write it: tools.order_status.handler, routes[0].profile,
    routes[0].when."metadata.inbox"."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            bare = part.replace("_", "").replace("-", "").isalnum() and part.isascii()
            text += ("." if text else "") + (part if bare else f'"{part}"')
    return text


def load_profiles(path: Path, environ: Mapping[str, str]) -> Profiles:
    """The profiles of the file at `path`, every reference resolved, or ProfilesError."""
    # Absolute but not resolved: a ConfigMap's files are symlinks into a timestamped folder
    # that each update replaces, so resolved paths would go stale.
    source = Path(os.path.abspath(path))
    place = _Place(f"profiles file {path}", source.parent, environ)
    doc = _read_toml(path, place)
    _check_schema(doc, place)
    profiles = {
        name: _profile(name, table, replace(place, profile=name))
        for name, table in doc["profiles"].items()
    }
    routes = tuple(
        _route(table, profiles, place.at("routes", index))
        for index, table in enumerate(doc.get("routes", ()))
    )
    return Profiles(profiles, _default(doc, profiles, place), routes, source=source)


def shorthand_profiles(model: str, instructions: str) -> Profiles:
    """The one profile AW_MODEL and AW_INSTRUCTIONS stand for, with the built-in tools; on
    the Assistants backend the assistant object (AW_ASSISTANT_ID) keeps deciding."""
    place = _Place(_SHORTHAND_ORIGIN, Path.cwd(), {}, profile=SHORTHAND_PROFILE)
    tools = tuple(
        _function_tool(name, {"entry_point": name}, place.at("tools", name))
        for name in _SHORTHAND_TOOLS
    )
    profile = Profile(
        SHORTHAND_PROFILE, model, instructions, tools=tools, overrides_assistant=False
    )
    return Profiles({SHORTHAND_PROFILE: profile}, SHORTHAND_PROFILE)


def knowledge_files(paths: Iterable[Path]) -> tuple[Path, ...]:
    """The documents that knowledge paths stand for: each file, and the files in each folder
    and its subfolders, except hidden ones."""
    found: list[Path] = []
    for path in paths:
        found.extend(_documents_in(path) if path.is_dir() else [path])
    return tuple(found)


def _documents_in(folder: Path) -> list[Path]:
    found: list[Path] = []
    # Following links, but not into hidden folders: a mounted ConfigMap is links into its
    # hidden `..data` folder, which would otherwise count every document twice.
    for root, folders, files in os.walk(folder, followlinks=True):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        found.extend(Path(root) / f for f in sorted(files) if not f.startswith("."))
    return found


# --- the file and its schema ---------------------------------------------------------------------


def _read_toml(path: Path, place: _Place) -> dict[str, Any]:
    text = _text(path, place, what="")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise place.fail(f"is not valid TOML: {exc}") from None


def _text(file: Path, place: _Place, what: str) -> str:
    """The file's UTF-8 text; `what` starts the error (the profiles file itself needs none)."""
    try:
        return file.read_bytes().decode()
    except FileNotFoundError:
        raise place.fail(f"{what}not found") from None
    except OSError as exc:
        raise place.fail(f"{what}cannot be read ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise place.fail(f"{what}is not UTF-8 text") from None


def _check_schema(doc: dict[str, Any], place: _Place) -> None:
    errors = list(validator(SCHEMA).iter_errors(doc))
    if errors:
        raise _schema_error(min(errors, key=_reading_order), place)


def _reading_order(error: ValidationError) -> tuple[tuple[str, ...], bool]:
    # A misspelt key also leaves the real one missing: the unknown key is the better report.
    return tuple(str(p) for p in error.absolute_path), error.validator != "additionalProperties"


def _schema_error(error: ValidationError, place: _Place) -> ProfilesError:
    problem, subkey = _schema_problem(error)
    parts = [*error.absolute_path, *subkey]
    if len(parts) >= 2 and parts[0] == "profiles":
        place, parts = replace(place, profile=str(parts[1])), parts[2:]
    return place.at(*parts).fail(problem)


def _schema_problem(error: ValidationError) -> tuple[str, list[str]]:
    """What is wrong, in words that quote no value, and the key below the error's path that it
    is about (an unknown key, a missing one, a table key that is not a valid name)."""
    instance, limit = cast(Any, error.instance), cast(Any, error.validator_value)
    if "propertyNames" in error.absolute_schema_path:
        return _value_problem(error), [str(instance)]
    if error.validator == "additionalProperties":
        return _unknown_key(error)
    if error.validator == "required":
        return "is required", [next(n for n in limit if n not in instance)]
    if error.validator == "dependentRequired":
        trigger = next(t for t in limit if t in instance and set(limit[t]).difference(instance))
        return f"is required with {trigger}", [min(set(limit[trigger]).difference(instance))]
    if error.validator in ("oneOf", "anyOf") and _alternative_keys(limit):
        return _alternatives(error.validator, _alternative_keys(limit), instance), []
    return _value_problem(error), []


def _unknown_key(error: ValidationError) -> tuple[str, list[str]]:
    known = sorted(error.schema.get("properties", {})) if isinstance(error.schema, dict) else []
    unknown = sorted(set(cast(dict[str, Any], error.instance)) - set(known))[0]
    close = difflib.get_close_matches(unknown, known, n=1)
    return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""), [unknown]


def _alternative_keys(subschemas: list[Any]) -> list[str]:
    """The keys of a oneOf/anyOf whose branches each require one key; else []."""
    if all(set(s) == {"required"} and len(s["required"]) == 1 for s in subschemas):
        return [s["required"][0] for s in subschemas]
    return []


def _alternatives(kind: str, keys: list[str], instance: Mapping[str, Any]) -> str:
    present = [k for k in keys if k in instance]
    if not present:
        return f"needs {'one' if kind == 'oneOf' else 'at least one'} of {', '.join(keys)}"
    return f"takes only one of {', '.join(keys)} (it has {' and '.join(present)})"


def _value_problem(error: ValidationError) -> str:
    value, limit = cast(Any, error.instance), cast(Any, error.validator_value)
    described = error.schema.get("description") if isinstance(error.schema, dict) else None
    problems: dict[str, Callable[[], str]] = {
        "type": lambda: (
            f"should be {_a(_toml_type_of_schema(limit))} (it is {_a(_toml_type(value))})"
        ),
        "enum": lambda: f"should be one of {', '.join(str(v) for v in limit)}",
        "minimum": lambda: f"should be at least {limit}",
        "maximum": lambda: f"should be at most {limit}",
        "exclusiveMinimum": lambda: f"should be more than {limit}",
        "minLength": lambda: "should not be empty",
        "maxLength": lambda: f"is too long: {len(value)} characters, at most {limit}",
        "minItems": lambda: "should not be empty",
        "minProperties": lambda: "should not be empty",
        "maxProperties": lambda: f"has too many entries: {len(value)}, at most {limit}",
        "uniqueItems": lambda: "has an item more than once",
        "pattern": lambda: f"should be {described}" if described else "does not match its pattern",
        "anyOf": lambda: f"should be {described}" if described else "fails the schema",
    }
    default = f"fails the schema's {error.validator} check"
    return problems.get(str(error.validator), lambda: default)()


_TOML_TYPES = {"object": "table"}


def _toml_type_of_schema(json_type: object) -> str:
    return _TOML_TYPES.get(str(json_type), str(json_type))


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "table", list: "array", str: "string", int: "integer", float: "float"}
    return names.get(type(value), type(value).__name__)  # TOML dates and times: datetime...


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


# --- profiles ------------------------------------------------------------------------------------


def _profile(name: str, table: dict[str, Any], place: _Place) -> Profile:
    return Profile(
        name=name,
        model=table["model"],
        instructions=_instructions(table, place),
        generation=_generation(table),
        tools=tuple(
            _function_tool(tool, spec, place.at("tools", tool))
            for tool, spec in table.get("tools", {}).items()
        ),
        hosted=_hosted(table, place),
        metadata=dict(table.get("metadata", {})),
        assistant_id=table.get("assistant_id"),
    )


def _instructions(table: dict[str, Any], place: _Place) -> str:
    if "instructions" in table:
        return cast(str, table["instructions"])
    place = place.at("instructions_file")
    file = _path(table["instructions_file"], place)
    text = _text(file, place, what=f"file {file} ")
    if not text.strip():
        raise place.fail(f"file {file} is empty")
    return text


def _generation(table: dict[str, Any]) -> Generation:
    temperature = table.get("temperature")
    return Generation(
        temperature=None if temperature is None else float(temperature),
        max_output_tokens=table.get("max_output_tokens"),
        reasoning_effort=table.get("reasoning_effort"),
    )


def _default(doc: dict[str, Any], profiles: Mapping[str, Profile], place: _Place) -> str:
    place = place.at("default")
    if "default" in doc:
        return _existing(doc["default"], profiles, place)
    if len(profiles) > 1:
        raise place.fail(f"is required when there are several profiles ({_names(profiles)})")
    return next(iter(profiles))


def _route(table: dict[str, Any], profiles: Mapping[str, Profile], place: _Place) -> Route:
    when = {key: (v,) if isinstance(v, str) else tuple(v) for key, v in table["when"].items()}
    return Route(_existing(table["profile"], profiles, place.at("profile")), when)


def _existing(name: str, profiles: Mapping[str, Profile], place: _Place) -> str:
    if name not in profiles:
        raise place.fail(f"no profile {name!r} (the profiles are {_names(profiles)})")
    return name


def _path(relative: str, place: _Place) -> Path:
    """A path of the file, absolute: relative ones start from the file's folder."""
    return Path(os.path.normpath(place.folder / relative))


def _names(profiles: Iterable[str]) -> str:
    return ", ".join(sorted(profiles))


# --- function tools ------------------------------------------------------------------------------

_UNDECLARED = {
    HandlerKind.HTTP: "is required for an HTTP tool",
    HandlerKind.PYTHON: "is required: the handler is a function, not a ToolSpec that declares it",
    HandlerKind.ENTRY_POINT: (
        "is required: the entry point is a function, not a ToolSpec that declares it"
    ),
}


def _function_tool(name: str, table: dict[str, Any], place: _Place) -> FunctionTool:
    if name == HANDOFF_TOOL:
        raise place.fail(f"{HANDOFF_TOOL} is the worker's own tool; give yours another name")
    handler, declared, kind = _handler(name, table, place)
    # The profile's keys override what a ToolSpec declares.
    merged = declared | table
    for key in ("description", "parameters"):
        if key not in merged:
            raise place.at(key).fail(_UNDECLARED[kind])
    _check_parameters(merged["parameters"], place.at("parameters"))
    timeout_s = float(merged.get("timeout_s", DEFAULT_TOOL_TIMEOUT_S))
    if isinstance(handler, HttpTool):
        # timeout_s bounds each try; the call as a whole may take every try and the waits.
        timeout_s = handler.budget_s
    return FunctionTool(
        name=name,
        description=merged["description"],
        parameters=merged["parameters"],
        handler=handler,
        grants=frozenset(Grant(g) for g in merged.get("grants", ())),
        idempotent=merged.get("idempotent", False),
        timeout_s=timeout_s,
        show_arguments=merged.get("show_arguments", False),
        handler_kind=kind,
    )


def _handler(
    name: str, table: dict[str, Any], place: _Place
) -> tuple[ToolHandler, dict[str, Any], HandlerKind]:
    """The handler, what it declares of itself (a ToolSpec's keys), and how it was named."""
    if "url" in table:
        return _http_handler(name, table, place), {}, HandlerKind.HTTP
    if "handler" in table:
        place = place.at("handler")
        found, kind = _imported(table["handler"], place), HandlerKind.PYTHON
    else:
        place = place.at("entry_point")
        found, kind = _entry_point(table["entry_point"], place), HandlerKind.ENTRY_POINT
    if isinstance(found, ToolSpec):
        declared = {
            "description": found.description,
            "parameters": found.parameters,
            "idempotent": found.idempotent,
            "grants": found.grants,
        }
        return found.handler, declared, kind
    if _is_async_callable(found):
        return cast(ToolHandler, found), {}, kind
    raise place.fail(f"is neither a ToolSpec nor an async function (it is {type(found).__name__})")


def _is_async_callable(found: object) -> bool:
    # A function, or an instance whose class's __call__ is one.
    return inspect.iscoroutinefunction(found) or inspect.iscoroutinefunction(type(found).__call__)


def _imported(reference: str, place: _Place) -> object:
    module_name, _, attribute = reference.partition(":")
    found: object = _module(module_name, place)
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise place.fail(f"module {module_name!r} has no attribute {attribute!r}") from None
    return found


def _module(name: str, place: _Place) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # Only the module named, or a package on its path, missing; not a module it imports.
        if exc.name is not None and f"{name}.".startswith(f"{exc.name}."):
            raise place.fail(f"module {exc.name!r} not found") from None
        raise place.fail(f"module {name!r} failed to import: {_detail(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the module's code raises on import
        raise place.fail(f"module {name!r} failed to import: {_detail(exc)}") from None


def _entry_point(name: str, place: _Place) -> object:
    group = entry_points(group=TOOLS_GROUP)
    found = group.select(name=name)
    if not found:
        listed = _names(group.names) or "none"
        raise place.fail(f"no entry point {name!r} in group {TOOLS_GROUP} (it has: {listed})")
    if len(found) > 1:
        raise place.fail(
            f"entry point {name!r} is registered more than once ({_names(e.value for e in found)})"
        )
    (entry,) = found
    try:
        return entry.load()
    except Exception as exc:  # noqa: BLE001 - whatever the module's code raises on import
        raise place.fail(f"entry point {name!r} ({entry.value}) failed: {_detail(exc)}") from None


def _detail(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 3] + "..."


def _http_handler(name: str, table: dict[str, Any], place: _Place) -> ToolHandler:
    place = place.at("secret_env")
    variable = table["secret_env"]
    secret = _environment(variable, place)
    try:
        return HttpTool(
            url=table["url"],
            secret=secret,
            timeout_s=float(table.get("timeout_s", DEFAULT_TOOL_TIMEOUT_S)),
            idempotent=table.get("idempotent", False),
            name=name,
        )
    except ValueError as exc:  # the secret's form; the message does not quote it
        raise place.fail(f"environment variable {variable}: {exc}") from None


def _environment(variable: str, place: _Place) -> str:
    value = place.environ.get(variable)
    if value is None:
        raise place.fail(f"environment variable {variable} is not set")
    if not value:
        raise place.fail(f"environment variable {variable} is empty")
    return value


def _check_parameters(parameters: Mapping[str, Any], place: _Place) -> None:
    try:
        Draft202012Validator.check_schema(parameters)
    except SchemaError as exc:
        where = "/" + "/".join(str(p) for p in exc.absolute_path)
        message = " ".join(exc.message.split())
        raise place.fail(f"is not a valid JSON Schema: {message} (at {where})") from None
    if parameters.get("type") != "object":
        raise place.fail("should be a JSON Schema of type object (a call's arguments are one)")


# --- hosted tools --------------------------------------------------------------------------------


def _hosted(table: dict[str, Any], place: _Place) -> HostedTools:
    file_search = table.get("file_search")
    return HostedTools(
        file_search=None
        if file_search is None
        else _file_search(file_search, place.at("file_search")),
        code_interpreter="code_interpreter" in table,
        web_search="web_search" in table,
        mcp=tuple(
            _mcp_server(label, server, place.at("mcp", label))
            for label, server in table.get("mcp", {}).items()
        ),
    )


def _file_search(table: dict[str, Any], place: _Place) -> FileSearch:
    knowledge = tuple(
        _knowledge(path, place.at("knowledge", index))
        for index, path in enumerate(table.get("knowledge", ()))
    )
    return FileSearch(
        vector_store_ids=tuple(table.get("vector_store_ids", ())),
        knowledge=knowledge,
        max_num_results=table.get("max_num_results"),
    )


def _knowledge(relative: str, place: _Place) -> Path:
    path = _path(relative, place)
    if not path.exists():
        raise place.fail(f"{path} does not exist")
    if path.is_dir() and not _documents_in(path):
        raise place.fail(f"folder {path} holds no documents")
    return path


def _mcp_server(label: str, table: dict[str, Any], place: _Place) -> McpServer:
    allowed, approve = table.get("allowed_tools"), table.get("approve", [])
    for index, tool in enumerate(approve):
        if allowed is not None and tool not in allowed:
            raise place.at("approve", index).fail(f"{tool!r} is not in allowed_tools")
    variable = table.get("authorization_env")
    return McpServer(
        label=label,
        url=table["url"],
        allowed_tools=None if allowed is None else tuple(allowed),
        approve=frozenset(approve),
        unapproved=Unapproved(table.get("unapproved", Unapproved.DENY)),
        authorization=None
        if variable is None
        else _environment(variable, place.at("authorization_env")),
    )
