"""The arguments of a scripted tool call, shaped like the tool's declaration.

A real model fills the parameters the function declares. The stand-in has no model: it fills
every declared string parameter with the newest user text, and falls back to ``{"query": ...}``
for a tool the request did not declare (a run whose assistant has no such tool, say).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from standin.models import Json


def scripted_arguments(name: str, tools: Sequence[Json], text: str) -> str:
    parameters = _declared_parameters(name, tools)
    if parameters is None:
        return json.dumps({"query": text})
    properties = parameters.get("properties")
    if not isinstance(properties, dict):
        return json.dumps({})
    strings = {
        key: text
        for key, schema in properties.items()
        if isinstance(schema, dict) and schema.get("type") == "string"
    }
    return json.dumps(strings)


def _declared_parameters(name: str, tools: Sequence[Json]) -> Json | None:
    for tool in tools:
        if tool.get("type") != "function":
            continue
        # Responses declares a function flat; Assistants nests it under "function".
        function = tool.get("function", tool)
        if isinstance(function, dict) and function.get("name") == name:
            parameters = function.get("parameters")
            return parameters if isinstance(parameters, dict) else {}
    return None
