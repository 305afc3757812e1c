"""The profiles file: a good one loads with every reference resolved; each kind of mistake
stops the load with one line naming the profile and the key; the choice of a profile for an
event; the AW_MODEL shorthand; `profiles check`. Files only: no network, no services."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any, get_args

import pytest
from openai.types.shared import ReasoningEffort

from tests.fixtures.profiles import acme_tools
from worker import builtin_tools
from worker.events import SCHEMAS_DIR, Author, UserMessage, validator
from worker.ops.profiles_cli import EXIT_INVALID, EXIT_VALID, check_profiles_file
from worker.profiles.load import (
    TOOLS_GROUP,
    ProfilesError,
    knowledge_files,
    load_profiles,
    shorthand_profiles,
)
from worker.profiles.model import (
    HandlerKind,
    Profile,
    Profiles,
    Route,
    Unapproved,
)
from worker.profiles.routing import (
    AUTHOR_ID,
    METADATA_PREFIX,
    choose_profile,
    unknown_profile_error,
)
from worker.relay.http_tools import HttpTool
from worker.toolkit import Grant, ToolContext

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "profiles"
GOOD = FIXTURES / "profiles.toml"
REFUND_SECRET = "refund-s3cret-0042"
DEEPWIKI_TOKEN = "deepwiki-t0ken-0042"
ENV = {"AW_TEST_REFUND_SECRET": REFUND_SECRET, "AW_TEST_DEEPWIKI_TOKEN": DEEPWIKI_TOKEN}


@pytest.fixture(scope="module")
def good() -> Profiles:
    return load_profiles(GOOD, ENV)


def _edited(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the fixture folder whose profiles.toml has `old` (once in it) replaced."""
    folder = tmp_path / "profiles"
    shutil.copytree(FIXTURES, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = folder / "profiles.toml"
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    return path


def _error(path: Path, environ: dict[str, str] = ENV) -> str:
    """The refusal of the file, after the `profiles file <path>: ` that starts it."""
    with pytest.raises(ProfilesError) as refused:
        load_profiles(path, environ)
    message = str(refused.value)
    assert "\n" not in message
    prefix = f"profiles file {path}: "
    assert message.startswith(prefix)
    return message.removeprefix(prefix)


# --- a good file ---------------------------------------------------------------------------------


def test_a_good_file_loads_its_profiles_default_and_routes(good: Profiles) -> None:
    assert set(good.profiles) == {"support", "sales"}
    assert good.default == "support"
    assert good.routes == (
        Route("sales", {"metadata.inbox": ("sales",)}),
        Route("sales", {"author.id": ("agent-7", "agent-9"), "metadata.channel": ("chat",)}),
    )
    assert good.source == GOOD
    support, sales = good["support"], good["sales"]
    assert support.instructions == (FIXTURES / "support.md").read_text()
    assert (support.generation.temperature, support.generation.max_output_tokens) == (0.3, 800)
    assert support.metadata == {"team": "care"}
    assert (sales.model, sales.generation.reasoning_effort) == ("o4-mini", "low")
    assert sales.assistant_id == "asst_sales"
    assert sales.instructions == "You are Acme's sales assistant."


def test_a_toolspec_gives_the_defaults_and_the_profile_sets_the_rest(good: Profiles) -> None:
    tool = good["support"].function("order_status")
    assert tool is not None
    spec = acme_tools.order_status
    assert (tool.handler, tool.handler_kind) == (spec.handler, HandlerKind.PYTHON)
    assert (tool.description, tool.parameters) == (spec.description, spec.parameters)
    assert (tool.idempotent, tool.grants) == (True, frozenset({Grant.METADATA}))
    assert (tool.timeout_s, tool.show_arguments) == (10.0, True)


def test_the_profiles_keys_override_what_the_toolspec_declares(tmp_path: Path) -> None:
    path = _edited(
        tmp_path,
        "timeout_s = 10\n",
        'timeout_s = 10\ndescription = "Ours."\nidempotent = false\ngrants = []\n',
    )
    tool = load_profiles(path, ENV)["support"].function("order_status")
    assert tool is not None
    assert (tool.description, tool.idempotent, tool.grants) == ("Ours.", False, frozenset())


def test_a_plain_async_function_takes_its_declaration_from_the_profile(good: Profiles) -> None:
    tool = good["sales"].function("quote")
    assert tool is not None
    assert (tool.handler, tool.handler_kind) == (acme_tools.quote, HandlerKind.PYTHON)
    assert tool.description == "Price one item."
    assert tool.parameters["required"] == ["sku"]
    assert (tool.idempotent, tool.timeout_s, tool.show_arguments) == (True, 30.0, False)


def test_an_entry_point_names_the_packages_own_tool(good: Profiles) -> None:
    tool = good["support"].function("current_time")
    assert tool is not None
    assert tool.handler_kind == HandlerKind.ENTRY_POINT
    assert tool.handler is builtin_tools.current_time.handler
    assert tool.description == builtin_tools.current_time.description
    assert tool.idempotent


def test_a_url_tool_is_an_http_tool_signed_with_the_secret_of_its_variable(
    good: Profiles,
) -> None:
    tool = good["support"].function("refund")
    assert tool is not None
    assert tool.handler_kind == HandlerKind.HTTP
    assert isinstance(tool.handler, HttpTool)
    handler = tool.handler
    assert (handler.name, handler.url) == ("refund", "https://tools.acme.internal/refund")
    assert (handler.timeout_s, handler.idempotent) == (30.0, False)
    assert tool.grants == frozenset({Grant.AUTHOR})


def test_hosted_tools_and_knowledge(good: Profiles) -> None:
    support, sales = good["support"].hosted, good["sales"].hosted
    assert support.file_search is not None
    assert support.file_search.vector_store_ids == ("vs_catalogue",)
    assert support.file_search.max_num_results == 5
    knowledge = FIXTURES / "knowledge"
    assert support.file_search.knowledge == (knowledge / "faq.md", knowledge / "policies")
    assert knowledge_files(support.file_search.knowledge) == (
        knowledge / "faq.md",
        knowledge / "policies" / "returns.md",
        knowledge / "policies" / "warranty.md",
    )
    assert (support.code_interpreter, support.web_search) == (True, False)
    (deepwiki,) = support.mcp
    assert (deepwiki.label, deepwiki.url) == ("deepwiki", "https://mcp.deepwiki.com/mcp")
    assert deepwiki.allowed_tools == ("read_wiki_structure", "ask_question")
    assert deepwiki.approve == frozenset({"read_wiki_structure"})
    assert (deepwiki.unapproved, deepwiki.authorization) == (Unapproved.HANDOFF, DEEPWIKI_TOKEN)
    assert DEEPWIKI_TOKEN not in repr(deepwiki)
    assert (sales.file_search, sales.code_interpreter, sales.web_search) == (None, False, True)


def test_one_profile_needs_no_default(tmp_path: Path) -> None:
    path = tmp_path / "one.toml"
    path.write_text('[profiles.only]\nmodel = "gpt-4o-mini"\ninstructions = "Hi."\n')
    profiles = load_profiles(path, {})
    assert (list(profiles.profiles), profiles.default, profiles.routes) == (["only"], "only", ())
    assert profiles["only"].tools == ()


def test_knowledge_in_a_mounted_configmap_counts_each_document_once(tmp_path: Path) -> None:
    # A ConfigMap volume: the documents live in a hidden timestamped folder, `..data` links to
    # it, and each visible name (files and folders alike) links through `..data`.
    mount = tmp_path / "kb"
    (mount / "..2026_01_01" / "policies").mkdir(parents=True)
    (mount / "..2026_01_01" / "faq.md").write_text("faq")
    (mount / "..2026_01_01" / "policies" / "returns.md").write_text("returns")
    (mount / "..data").symlink_to("..2026_01_01")
    (mount / "faq.md").symlink_to("..data/faq.md")
    (mount / "policies").symlink_to("..data/policies")
    (mount / ".hidden.md").write_text("not a document")
    assert knowledge_files([mount]) == (mount / "faq.md", mount / "policies" / "returns.md")


def test_paths_in_a_mounted_configmap_stay_below_the_mount(tmp_path: Path) -> None:
    # Resolved, they would name the timestamped folder that the next update deletes.
    mount = tmp_path / "config"
    shutil.copytree(FIXTURES, mount / "..2026_01_01", ignore=shutil.ignore_patterns("*.py"))
    (mount / "..data").symlink_to("..2026_01_01")
    for name in ("profiles.toml", "support.md", "knowledge"):
        (mount / name).symlink_to(f"..data/{name}")
    profiles = load_profiles(mount / "profiles.toml", ENV)
    file_search = profiles["support"].hosted.file_search
    assert file_search is not None
    assert file_search.knowledge == (
        mount / "knowledge" / "faq.md",
        mount / "knowledge" / "policies",
    )
    assert profiles.source == mount / "profiles.toml"


# --- mistakes, one line each ---------------------------------------------------------------------

KEY_MISTAKES = [
    pytest.param(
        "temperature = 0.3",
        "tempreature = 0.3",
        "profile 'support', key tempreature: unknown key (did you mean 'temperature'?)",
        id="typo-in-a-profile-key",
    ),
    pytest.param(
        "timeout_s = 10",
        "timeout = 10",
        "profile 'support', key tools.order_status.timeout: unknown key "
        "(did you mean 'timeout_s'?)",
        id="typo-in-a-tool-key",
    ),
    pytest.param(
        'default = "support"',
        'defualt = "support"',
        "key defualt: unknown key (did you mean 'default'?)",
        id="typo-at-the-top",
    ),
    pytest.param(
        "unapproved = ",
        "unaproved = ",
        "profile 'support', key mcp.deepwiki.unaproved: unknown key (did you mean 'unapproved'?)",
        id="typo-in-an-mcp-key",
    ),
    pytest.param(
        'model = "o4-mini"\n',
        "",
        "profile 'sales', key model: is required",
        id="missing-model",
    ),
    pytest.param(
        "max_output_tokens = 800",
        'max_output_tokens = "800"',
        "profile 'support', key max_output_tokens: should be an integer (it is a string)",
        id="wrong-type",
    ),
    pytest.param(
        "temperature = 0.3",
        "temperature = 3",
        "profile 'support', key temperature: should be at most 2",
        id="out-of-range",
    ),
    pytest.param(
        'reasoning_effort = "low"',
        'reasoning_effort = "lowest"',
        "profile 'sales', key reasoning_effort: should be one of "
        "none, minimal, low, medium, high, xhigh, max",
        id="bad-reasoning-effort",
    ),
    pytest.param(
        'metadata = { team = "care" }',
        'metadata = { aw_team = "care" }',
        "profile 'support', key metadata.aw_team: should be a key that does not start with aw_ "
        "(the worker's own tags)",
        id="metadata-key-of-the-worker",
    ),
    pytest.param(
        'metadata = { team = "care" }',
        f'metadata = {{ team = "{"x" * 513}" }}',
        "profile 'support', key metadata.team: is too long: 513 characters, at most 512",
        id="metadata-value-too-long",
    ),
    pytest.param(
        "[profiles.sales.tools.quote]",
        '[profiles.sales.tools."quote this"]',
        "profile 'sales', key tools.\"quote this\": should be a name of 1 to 64 letters, "
        "digits, '_' or '-'",
        id="tool-name-not-a-name",
    ),
    pytest.param(
        "timeout_s = 10",
        'timeout_s = 10\nentry_point = "current_time"',
        "profile 'support', key tools.order_status: takes only one of handler, entry_point, url "
        "(it has handler and entry_point)",
        id="two-handlers",
    ),
    pytest.param(
        'secret_env = "AW_TEST_REFUND_SECRET"\n',
        "",
        "profile 'support', key tools.refund.secret_env: is required with url",
        id="url-without-secret",
    ),
    pytest.param(
        'instructions = "You are',
        'instructions_file = "support.md"\ninstructions = "You are',
        "profile 'sales': takes only one of instructions, instructions_file "
        "(it has instructions and instructions_file)",
        id="instructions-twice",
    ),
    pytest.param(
        '"metadata.inbox" = "sales"',
        '"meta.inbox" = "sales"',
        "key routes[0].when.\"meta.inbox\": should be 'metadata.<key>' or 'author.id'",
        id="route-on-an-unknown-field",
    ),
    pytest.param(
        '"metadata.inbox" = "sales"',
        '"metadata.inbox" = 7',
        'key routes[0].when."metadata.inbox": should be a string or a non-empty array of strings',
        id="route-value-not-a-string",
    ),
    pytest.param(
        'vector_store_ids = ["vs_catalogue"]\nknowledge = ["knowledge/faq.md", '
        '"knowledge/policies"]\n',
        "",
        "profile 'support', key file_search: needs at least one of vector_store_ids, knowledge",
        id="file-search-over-nothing",
    ),
    pytest.param(
        "code_interpreter]",
        'code_interpreter]\nfile_ids = ["file-1"]',
        "profile 'support', key code_interpreter.file_ids: unknown key",
        id="key-in-a-switch",
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), KEY_MISTAKES)
def test_a_schema_mistake_is_one_line_naming_the_profile_and_the_key(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert _error(_edited(tmp_path, old, new)) == expected


REFERENCE_MISTAKES = [
    pytest.param(
        'profile = "sales"\nwhen = { "metadata.inbox"',
        'profile = "salse"\nwhen = { "metadata.inbox"',
        "key routes[0].profile: no profile 'salse' (the profiles are sales, support)",
        id="unknown-profile-in-a-route",
    ),
    pytest.param(
        'default = "support"',
        'default = "suport"',
        "key default: no profile 'suport' (the profiles are sales, support)",
        id="unknown-default",
    ),
    pytest.param(
        'default = "support"\n',
        "",
        "key default: is required when there are several profiles (sales, support)",
        id="no-default-with-two-profiles",
    ),
    pytest.param(
        '"tests.fixtures.profiles.acme_tools:order_status"',
        '"acme:order_status"',
        "profile 'support', key tools.order_status.handler: module 'acme' not found",
        id="handler-module-not-found",
    ),
    pytest.param(
        '"tests.fixtures.profiles.acme_tools:order_status"',
        '"tests.fixtures.profiles.acme:order_status"',
        "profile 'support', key tools.order_status.handler: "
        "module 'tests.fixtures.profiles.acme' not found",
        id="handler-submodule-not-found",
    ),
    pytest.param(
        "acme_tools:order_status",
        "acme_tools:order_stat",
        "profile 'support', key tools.order_status.handler: "
        "module 'tests.fixtures.profiles.acme_tools' has no attribute 'order_stat'",
        id="handler-attribute-missing",
    ),
    pytest.param(
        "acme_tools:order_status",
        "acme_tools",
        "profile 'support', key tools.order_status.handler: should be a Python reference, "
        "module:attribute (for example acme_tools.orders:order_status)",
        id="handler-not-a-reference",
    ),
    pytest.param(
        "acme_tools:quote",
        "acme_tools:not_async",
        "profile 'sales', key tools.quote.handler: is neither a ToolSpec nor an async function "
        "(it is function)",
        id="handler-not-async",
    ),
    pytest.param(
        'description = "Price one item."\n',
        "",
        "profile 'sales', key tools.quote.description: is required: the handler is a function, "
        "not a ToolSpec that declares it",
        id="plain-function-without-description",
    ),
    pytest.param(
        'description = "Start a refund of one order."\n',
        "",
        "profile 'support', key tools.refund.description: is required for an HTTP tool",
        id="url-tool-without-description",
    ),
    pytest.param(
        'instructions_file = "support.md"',
        'instructions_file = "suport.md"',
        "profile 'support', key instructions_file: file {folder}/suport.md not found",
        id="instructions-file-missing",
    ),
    pytest.param(
        '"knowledge/policies"',
        '"knowledge/policy"',
        "profile 'support', key file_search.knowledge[1]: {folder}/knowledge/policy does not exist",
        id="knowledge-path-missing",
    ),
    pytest.param(
        'properties = { order_id = { type = "string" } }, required = ["order_id"] }\nurl',
        'properties = { order_id = { type = "strin" } }, required = ["order_id"] }\nurl',
        "profile 'support', key tools.refund.parameters: is not a valid JSON Schema: "
        "'strin' is not valid under any of the given schemas (at /properties/order_id/type)",
        id="parameters-not-a-schema",
    ),
    pytest.param(
        'parameters = { type = "object", properties = { sku',
        'parameters = { type = "array", properties = { sku',
        "profile 'sales', key tools.quote.parameters: should be a JSON Schema of type object "
        "(a call's arguments are one)",
        id="parameters-not-an-object-schema",
    ),
    pytest.param(
        "[profiles.sales.tools.quote]",
        "[profiles.sales.tools.handoff_to_human]",
        "profile 'sales', key tools.handoff_to_human: handoff_to_human is the worker's own "
        "tool; give yours another name",
        id="tool-named-handoff",
    ),
    pytest.param(
        'approve = ["read_wiki_structure"]',
        'approve = ["read_wiki_structures"]',
        "profile 'support', key mcp.deepwiki.approve[0]: "
        "'read_wiki_structures' is not in allowed_tools",
        id="approval-of-a-tool-not-allowed",
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), REFERENCE_MISTAKES)
def test_a_reference_that_does_not_resolve_is_one_line_naming_the_profile_and_the_key(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    path = _edited(tmp_path, old, new)
    assert _error(path) == expected.format(folder=path.parent)


def test_a_tool_declared_twice_is_refused_by_toml(tmp_path: Path) -> None:
    path = _edited(
        tmp_path, "[profiles.support.tools.refund]", "[profiles.support.tools.order_status]"
    )
    error = _error(path)
    assert error.startswith("is not valid TOML: Cannot declare ")
    assert "'order_status') twice (at line " in error


def test_an_unknown_entry_point_is_refused_listing_the_ones_there_are(tmp_path: Path) -> None:
    path = _edited(tmp_path, 'entry_point = "current_time"', 'entry_point = "current_tim"')
    error = _error(path)
    assert error.startswith(
        "profile 'support', key tools.current_time.entry_point: "
        f"no entry point 'current_tim' in group {TOOLS_GROUP} (it has: "
    )
    assert "current_time" in error.split("(it has: ")[1]


@pytest.mark.parametrize(
    ("variable", "key"),
    [
        ("AW_TEST_REFUND_SECRET", "tools.refund.secret_env"),
        ("AW_TEST_DEEPWIKI_TOKEN", "mcp.deepwiki.authorization_env"),
    ],
)
def test_a_secret_variable_that_is_not_set_is_named(variable: str, key: str) -> None:
    environ = {k: v for k, v in ENV.items() if k != variable}
    assert _error(GOOD, environ) == (
        f"profile 'support', key {key}: environment variable {variable} is not set"
    )
    assert _error(GOOD, {**environ, variable: ""}).endswith(f"{variable} is empty")


def test_a_secret_of_the_wrong_form_is_refused_without_quoting_it() -> None:
    secret = "whsec_not*base64"
    error = _error(GOOD, {**ENV, "AW_TEST_REFUND_SECRET": secret})
    assert error.startswith(
        "profile 'support', key tools.refund.secret_env: environment variable "
        "AW_TEST_REFUND_SECRET: "
    )
    assert "base64" in error
    assert secret not in error
    assert "not*base64" not in error


def test_a_knowledge_folder_without_documents_is_refused(tmp_path: Path) -> None:
    path = _edited(tmp_path, '"knowledge/policies"', '"knowledge/empty"')
    (path.parent / "knowledge" / "empty").mkdir()
    (path.parent / "knowledge" / "empty" / ".keep").write_text("")
    assert _error(path) == (
        f"profile 'support', key file_search.knowledge[1]: "
        f"folder {path.parent}/knowledge/empty holds no documents"
    )


def test_a_file_that_is_missing_or_not_toml_is_one_line(tmp_path: Path) -> None:
    assert _error(tmp_path / "absent.toml") == "not found"
    (tmp_path / "bad.toml").write_text("[profiles.support\n")
    assert _error(tmp_path / "bad.toml").startswith("is not valid TOML: ")
    (tmp_path / "latin1.toml").write_bytes('model = "caf\xe9"'.encode("latin-1"))
    assert _error(tmp_path / "latin1.toml") == "is not UTF-8 text"
    (tmp_path / "empty.toml").write_text("")
    assert _error(tmp_path / "empty.toml") == "key profiles: is required"


def test_a_module_that_fails_on_import_is_named_with_its_error(tmp_path: Path) -> None:
    module = "tests.fixtures.profiles.acme_tools:order_status"
    path = _edited(tmp_path, f'"{module}"', '"json.decoder:JSONDecodeError.nothing"')
    assert _error(path) == (
        "profile 'support', key tools.order_status.handler: "
        "module 'json.decoder' has no attribute 'JSONDecodeError.nothing'"
    )
    path = _edited(tmp_path / "2", f'"{module}"', '"tests.fixtures.profiles.broken_tools:x"')
    assert _error(path) == (
        "profile 'support', key tools.order_status.handler: module "
        "'tests.fixtures.profiles.broken_tools' failed to import: "
        "ModuleNotFoundError: No module named 'acme_internal_sdk'"
    )


# --- the schema ----------------------------------------------------------------------------------


def _subschemas(schema: Any) -> list[dict[str, Any]]:
    if isinstance(schema, list):
        return [s for item in schema for s in _subschemas(item)]
    if not isinstance(schema, dict):
        return []
    return [schema, *(s for value in schema.values() for s in _subschemas(value))]


def test_every_object_of_the_schema_refuses_keys_it_does_not_declare() -> None:
    schema = json.loads((SCHEMAS_DIR / "profiles.v1.json").read_text())
    assert validator("profiles.v1").schema == schema
    # Only a tool's parameters (a JSON Schema of the operator's) is left open.
    parameters = schema["$defs"]["function_tool"]["properties"]["parameters"]
    objects = [s for s in _subschemas(schema) if s.get("type") == "object" and s != parameters]
    tables = [s for s in objects if "propertyNames" not in s]  # not maps of names to values
    assert len(tables) == 7
    assert all(s["additionalProperties"] is False for s in tables)


def test_the_schemas_closed_sets_are_the_codes() -> None:
    defs = json.loads((SCHEMAS_DIR / "profiles.v1.json").read_text())["$defs"]
    efforts = defs["profile"]["properties"]["reasoning_effort"]["enum"]
    assert set(efforts) == {e for e in get_args(get_args(ReasoningEffort)[0])}
    assert defs["function_tool"]["properties"]["grants"]["items"]["enum"] == list(Grant)
    assert defs["mcp_server"]["properties"]["unapproved"]["enum"] == list(Unapproved)


def test_route_keys_are_the_fields_routing_reads() -> None:
    doc: dict[str, Any] = {
        "profiles": {"a": {"model": "m", "instructions": "i"}},
        "routes": [{"profile": "a", "when": {AUTHOR_ID: "u", f"{METADATA_PREFIX}inbox": "x"}}],
    }
    assert list(validator("profiles.v1").iter_errors(doc)) == []


# --- choosing a profile --------------------------------------------------------------------------

ROUTED = Profiles(
    {
        name: Profile(name, "gpt-4o-mini", f"You are {name}.")
        for name in ("support", "sales", "vip")
    },
    default="support",
    routes=(
        Route("sales", {"metadata.inbox": ("sales", "presales")}),
        Route("vip", {"author.id": ("agent-7",), "metadata.tier": ("gold",)}),
        Route("support", {"metadata.tier": ("gold",)}),
    ),
)


def _message(
    metadata: dict[str, str] | None = None, author: str | None = None, profile: str | None = None
) -> UserMessage:
    return UserMessage(
        event_id="evt-1",
        conversation_id="conv-1",
        text="hello",
        metadata=metadata or {},
        author=None if author is None else Author(author),
        profile=profile,
    )


def test_the_events_own_profile_comes_first() -> None:
    message = _message({"inbox": "sales"}, profile="vip")
    assert choose_profile(ROUTED, message, conversation_profile="support") == "vip"


def test_then_the_conversations_profile() -> None:
    message = _message({"inbox": "sales"})
    assert choose_profile(ROUTED, message, conversation_profile="vip") == "vip"


@pytest.mark.parametrize(
    ("metadata", "author", "chosen"),
    [
        ({"inbox": "sales"}, None, "sales"),
        ({"inbox": "presales"}, None, "sales"),  # any of a route's values
        ({"inbox": "sales", "tier": "gold"}, "agent-7", "sales"),  # the first that matches
        ({"tier": "gold"}, "agent-7", "vip"),  # all of its fields
        ({"tier": "gold"}, "agent-8", "support"),
        ({"tier": "gold", "author.id": "agent-7"}, None, "support"),  # metadata is not author
        ({"inbox": "billing"}, "agent-7", "support"),  # no route: the default
        ({}, None, "support"),
    ],
)
def test_then_the_first_route_that_matches_else_the_default(
    metadata: dict[str, str], author: str | None, chosen: str
) -> None:
    assert choose_profile(ROUTED, _message(metadata, author), conversation_profile=None) == chosen


def test_an_unknown_profile_is_refused_in_one_line_listing_the_valid_ones() -> None:
    assert unknown_profile_error(ROUTED, "salse") == (
        "unknown profile 'salse'; the profiles are sales, support, vip"
    )
    odd = "not a name\nat all"
    assert unknown_profile_error(ROUTED, odd) == (
        "unknown profile (a name of 17 characters); the profiles are sales, support, vip"
    )


# --- the AW_MODEL shorthand ----------------------------------------------------------------------


async def test_the_shorthand_is_one_default_profile_with_the_current_time_tool() -> None:
    profiles = shorthand_profiles("gpt-4o-mini", "Be kind.")
    assert (list(profiles.profiles), profiles.default, profiles.source) == (
        ["default"],
        "default",
        None,
    )
    profile = profiles["default"]
    assert (profile.model, profile.instructions, profile.overrides_assistant) == (
        "gpt-4o-mini",
        "Be kind.",
        False,
    )
    (tool,) = profile.tools
    assert (tool.name, tool.handler_kind) == ("current_time", HandlerKind.ENTRY_POINT)
    context = ToolContext(conversation_id="c", profile="default", call_id="call_1", tool=tool.name)
    assert "utc" in json.loads(await tool.handler({}, context))


# --- profiles check ------------------------------------------------------------------------------


def test_check_prints_a_row_a_profile_and_exits_0() -> None:
    out = io.StringIO()
    assert check_profiles_file(GOOD, ENV, out, io.StringIO()) == EXIT_VALID
    lines = out.getvalue().splitlines()
    support = next(line for line in lines if "support (default)" in line)
    for cell in ("gpt-4o-mini", "order_status (python)", "file_search (1 vector store)", "3 files"):
        assert cell in support
    text = out.getvalue()
    for shown in ("current_time (entry_point)", "refund (http)", "mcp deepwiki (handoff)"):
        assert shown in text
    sales = next(line for line in lines if "│ sales" in line)
    for cell in ("o4-mini", "quote (python)", "web_search", "metadata.inbox = sales"):
        assert cell in sales
    assert "author.id in agent-7, agent-9 and metadata.channel = chat" in text
    assert lines[-1] == f"profiles file {GOOD}: 2 profiles, 2 routes, default 'support': valid"
    assert REFUND_SECRET not in text
    assert DEEPWIKI_TOKEN not in text


def test_check_prints_the_one_line_and_exits_2_for_a_bad_file(tmp_path: Path) -> None:
    path = _edited(tmp_path, "temperature = 0.3", "tempreature = 0.3")
    out, err = io.StringIO(), io.StringIO()
    assert check_profiles_file(path, ENV, out, err) == EXIT_INVALID == 2
    assert out.getvalue() == ""
    assert err.getvalue() == (
        f"profiles file {path}: profile 'support', key tempreature: unknown key "
        "(did you mean 'temperature'?)\n"
    )
