"""Web search (tools of type ``web_search`` or ``web_search_preview``), as the Responses API
runs it.

A declared web search is used only when the newest user text says ``[[web_search]]``
(without the marker the tool is accepted and left unused, as a model may): the response
shows a ``web_search_call`` whose search query is the user text (its ``sources`` only when
``include`` asks for ``web_search_call.action.sources``), and the reply links an example
result with a ``url_citation`` over the link. The marker without a declared web search is
a 400, so a scenario never passes by a missing tool.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import quote_plus

from standin.errors import bad_request, invalid_value
from standin.models import Json, new_id
from standin.replies import ReplyNote
from standin.response_options import includes

WEB_SEARCH_TYPES = (
    "web_search",
    "web_search_2025_08_26",
    "web_search_preview",
    "web_search_preview_2025_03_11",
)
_MARKER = re.compile(r"\[\[web_search\]\]")
_CONTEXT_SIZES = ("low", "medium", "high")
_RESULT_TITLE = "Example Domain"


def check_web_search_tool(tool: Json, param: str) -> None:
    size = tool.get("search_context_size")
    if size is not None and size not in _CONTEXT_SIZES:
        raise invalid_value(size, _CONTEXT_SIZES, f"{param}.search_context_size")


def wants_web_search(text: str | None, tools: Sequence[Json]) -> bool:
    if not _MARKER.search(text or ""):
        return False
    if not any(tool["type"] in WEB_SEARCH_TYPES for tool in tools):
        raise bad_request(
            "The stand-in's [[web_search]] marker needs a web_search tool in 'tools'.",
            param="tools",
        )
    return True


def result_url(query: str) -> str:
    """The example page every search finds, one per query."""
    return f"https://example.com/search?q={quote_plus(query)}"


def search_web(query: str, options: Json) -> tuple[Json, ReplyNote]:
    """The web search call for ``query``, and the reply's note linking its result."""
    url = result_url(query)
    action: Json = {"type": "search", "query": query, "queries": [query]}
    if includes(options, "web_search_call.action.sources"):
        action["sources"] = [{"type": "url", "url": url}]
    call = {"id": new_id("ws"), "type": "web_search_call", "status": "completed", "action": action}
    link = f"[example.com]({url})"

    def cite(start: int, end: int) -> Json:
        return {
            "type": "url_citation",
            "url": url,
            "title": _RESULT_TITLE,
            "start_index": start,
            "end_index": end,
        }

    return call, ReplyNote(f"web search found ({link})", cited=link, cites=(cite,))
