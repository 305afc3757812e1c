"""Generation options of ``POST /v1/responses``: checked as the API checks them, recorded,
and shown back on the response object with the API's defaults.

The stand-in's model ignores most of them; ``max_output_tokens`` caps the reply and
``include`` decides which tool-call details the output carries. A parameter the API does
not know is a 400, as it is there, so a client's typo never goes unnoticed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from standin.errors import (
    ApiError,
    bad_request,
    invalid_type,
    invalid_value,
    missing_parameter,
    string_too_long,
    unknown_parameter,
)
from standin.models import Json

# CreateResponse's properties in the spec, plus those the SDK's ResponseCreateParams adds.
_REQUEST_PARAMETERS = frozenset(
    {
        "access_programs",
        "background",
        "background_options",
        "context_management",
        "conversation",
        "image",
        "include",
        "input",
        "instructions",
        "max_output_tokens",
        "max_tool_calls",
        "metadata",
        "model",
        "moderation",
        "parallel_tool_calls",
        "previous_response_id",
        "prompt",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning",
        "safety_identifier",
        "service_tier",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
    }
)
INCLUDABLE = (
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
)
_SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority", "fast", "ultrafast")
_TRUNCATIONS = ("auto", "disabled")
_TOOL_CHOICE_MODES = ("none", "auto", "required")
_TEXT_FORMATS = ("text", "json_schema", "json_object")
_VERBOSITIES = ("low", "medium", "high")
_REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_REASONING_SUMMARIES = ("auto", "concise", "detailed")
_REASONING_CONTEXTS = ("auto", "current_turn", "all_turns")
_REASONING_FIELDS = ("effort", "summary", "generate_summary", "context", "mode")
# The API refuses reasoning settings for these families and applies them to o-series and
# gpt-5 models; any other name (a test's "gpt-test") is given the benefit of the doubt.
_NON_REASONING_PREFIXES = ("gpt-4", "gpt-3.5")
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")
_SAFETY_IDENTIFIER_MAX_CHARS = 64

Check = Callable[[Any, str], Any]


def parse_options(body: Json, model: str) -> Json:
    """The generation options a create request set, checked; refuses unknown parameters."""
    for key in body:
        if key not in _REQUEST_PARAMETERS:
            raise unknown_parameter(key)
    options = {
        key: check(body[key], key) for key, check in _CHECKS.items() if body.get(key) is not None
    }
    if body.get("reasoning") is not None:
        options["reasoning"] = _reasoning(body["reasoning"], model)
    return options


def shown_options(options: Json, model: str) -> Json:
    """The option fields of a response object: what the request set, else the API's default."""
    shown = {key: options.get(key, default) for key, default in _SHOWN_DEFAULTS.items()}
    shown["text"] = {**_SHOWN_TEXT, **options.get("text", {})}
    shown["service_tier"] = _served_tier(options.get("service_tier"))
    shown["reasoning"] = _shown_reasoning(options.get("reasoning"), model)
    return shown


def includes(options: Json, what: str) -> bool:
    return what in options.get("include", ())


def ensure_integer(
    value: Any, param: str, minimum: int | None = None, maximum: int | None = None
) -> int:
    """An integer in range, or the API's 400 for it (as for ``max_output_tokens``)."""
    checked: int = _integer(minimum, maximum)(value, param)
    return checked


def _served_tier(requested: str | None) -> str:
    # The response names the tier that served it: "auto" resolves to the project's default,
    # and fast mode is reported as priority.
    if requested in (None, "auto"):
        return "default"
    return "priority" if requested == "fast" else str(requested)


def _shown_reasoning(reasoning: Json | None, model: str) -> Json:
    default_effort = "medium" if _REASONING_MODEL.match(model) else None
    shown: Json = {"effort": default_effort, "summary": None}
    shown.update(reasoning or {})
    return shown


def _number(minimum: float, maximum: float) -> Check:
    def check(value: Any, param: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid_type(param, "a decimal", value)
        _ensure_range(value, param, "decimal", minimum, maximum)
        return value

    return check


def _integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    def check(value: Any, param: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_type(param, "an integer", value)
        _ensure_range(value, param, "integer", minimum, maximum)
        return value

    return check


def _ensure_range(
    value: float, param: str, kind: str, minimum: float | None, maximum: float | None
) -> None:
    if minimum is not None and value < minimum:
        raise _out_of_range(param, kind, value, f">= {minimum}", "below_min")
    if maximum is not None and value > maximum:
        raise _out_of_range(param, kind, value, f"<= {maximum}", "above_max")


def _out_of_range(param: str, kind: str, value: float, bound: str, side: str) -> ApiError:
    # As the API words it: "Invalid 'max_output_tokens': integer below minimum value.
    # Expected a value >= 16, but got 10 instead." (code integer_below_min_value).
    wording = "below minimum" if side == "below_min" else "above maximum"
    return bad_request(
        f"Invalid '{param}': {kind} {wording} value. Expected a value {bound}, "
        f"but got {value} instead.",
        param=param,
        code=f"{kind}_{side}_value",
    )


def _choice(values: Sequence[str]) -> Check:
    def check(value: Any, param: str) -> str:
        if not isinstance(value, str):
            raise invalid_type(param, "a string", value)
        if value not in values:
            raise invalid_value(value, values, param)
        return value

    return check


def _boolean(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise invalid_type(param, "a boolean", value)
    return value


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise invalid_type(param, "a string", value)
    return value


def _required_string(value: Any, param: str) -> str:
    if value is None:
        raise missing_parameter(param)
    return _string(value, param)


def _object(value: Any, param: str) -> Json:
    if not isinstance(value, dict):
        raise invalid_type(param, "an object", value)
    return value


def _safety_identifier(value: Any, param: str) -> str:
    text = _string(value, param)
    if len(text) > _SAFETY_IDENTIFIER_MAX_CHARS:
        raise string_too_long(param, _SAFETY_IDENTIFIER_MAX_CHARS, len(text))
    return text


def _include(value: Any, param: str) -> list[str]:
    if not isinstance(value, list):
        raise invalid_type(param, "an array", value)
    return [_choice(INCLUDABLE)(item, f"{param}[{index}]") for index, item in enumerate(value)]


def _tool_choice(value: Any, param: str) -> Any:
    if isinstance(value, str):
        return _choice(_TOOL_CHOICE_MODES)(value, param)
    choice = _object(value, param)
    _required_string(choice.get("type"), f"{param}.type")
    return choice


def _text(value: Any, param: str) -> Json:
    text = _object(value, param)
    if text.get("verbosity") is not None:
        _choice(_VERBOSITIES)(text["verbosity"], f"{param}.verbosity")
    if text.get("format") is not None:
        _text_format(_object(text["format"], f"{param}.format"), f"{param}.format")
    return text


def _text_format(text_format: Json, param: str) -> None:
    kind = _required_string(text_format.get("type"), f"{param}.type")
    _choice(_TEXT_FORMATS)(kind, f"{param}.type")
    if kind == "json_schema":
        _required_string(text_format.get("name"), f"{param}.name")
        if text_format.get("schema") is None:
            raise missing_parameter(f"{param}.schema")
        _object(text_format["schema"], f"{param}.schema")


def _prompt(value: Any, param: str) -> Json:
    prompt = _object(value, param)
    _required_string(prompt.get("id"), f"{param}.id")
    return {"id": prompt["id"], "variables": None, "version": None, **prompt}


def _reasoning(value: Any, model: str) -> Json:
    reasoning = _object(value, "reasoning")
    for key in reasoning:
        if key not in _REASONING_FIELDS:
            raise unknown_parameter(f"reasoning.{key}")
    if not _REASONING_MODEL.match(model) and model.startswith(_NON_REASONING_PREFIXES):
        _refuse_reasoning(reasoning)
    checks: dict[str, Check] = {
        "effort": _choice(_REASONING_EFFORTS),
        "summary": _choice(_REASONING_SUMMARIES),
        "generate_summary": _choice(_REASONING_SUMMARIES),
        "context": _choice(_REASONING_CONTEXTS),
        "mode": _string,
    }
    return {
        key: checks[key](item, f"reasoning.{key}") if item is not None else None
        for key, item in reasoning.items()
    }


def _refuse_reasoning(reasoning: Json) -> None:
    for key in _REASONING_FIELDS:
        if reasoning.get(key) is not None:
            raise bad_request(
                f"Unsupported parameter: 'reasoning.{key}' is not supported with this model.",
                param=f"reasoning.{key}",
                code="unsupported_parameter",
            )


_CHECKS: dict[str, Check] = {
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "max_output_tokens": _integer(16),
    "max_tool_calls": _integer(),
    "top_logprobs": _integer(0, 20),
    "parallel_tool_calls": _boolean,
    "store": _boolean,
    "tool_choice": _tool_choice,
    "text": _text,
    "truncation": _choice(_TRUNCATIONS),
    "service_tier": _choice(_SERVICE_TIERS),
    "include": _include,
    "prompt": _prompt,
    "previous_response_id": _string,
    "prompt_cache_key": _string,
    "safety_identifier": _safety_identifier,
    "user": _string,
}
_SHOWN_DEFAULTS: Json = {
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "temperature": 1.0,
    "top_p": 1.0,
    "max_output_tokens": None,
    "max_tool_calls": None,
    "top_logprobs": 0,
    "previous_response_id": None,
    "prompt": None,
    "prompt_cache_key": None,
    "safety_identifier": None,
    "user": None,
    "truncation": "disabled",
    "store": True,
}
_SHOWN_TEXT: Json = {"format": {"type": "text"}, "verbosity": "medium"}
