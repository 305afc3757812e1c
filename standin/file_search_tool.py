"""File search (tools of type ``file_search``), as the Responses API runs it.

A declared file search runs in every turn's first response, on the newest user text, over
the tool's vector stores (standin.file_search.search, the same search runs use). The
response shows a ``file_search_call`` (its ``results`` only when ``include`` asks for
``file_search_call.results``, as the API does); when something matched, the reply quotes
the best passage and carries one ``file_citation`` per file found, placed at the end of
the quote. Nothing found: the call with no results, and the plain reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from standin.errors import invalid_type, missing_parameter
from standin.file_search import DEFAULT_LIMIT, Hit, search
from standin.models import Json, new_id
from standin.replies import Cite, ReplyNote
from standin.response_options import ensure_integer, includes

if TYPE_CHECKING:
    from standin.state import StandInState

_MAX_NUM_RESULTS = 50


def check_file_search_tool(tool: Json, param: str) -> None:
    store_ids = tool.get("vector_store_ids")
    if store_ids is None:
        raise missing_parameter(f"{param}.vector_store_ids")
    if not isinstance(store_ids, list) or not all(isinstance(i, str) for i in store_ids):
        raise invalid_type(f"{param}.vector_store_ids", "an array of strings", store_ids)
    if tool.get("max_num_results") is not None:
        ensure_integer(tool["max_num_results"], f"{param}.max_num_results", 1, _MAX_NUM_RESULTS)


def declared_file_search(tools: Sequence[Json]) -> Json | None:
    return next((tool for tool in tools if tool["type"] == "file_search"), None)


def search_files(
    state: StandInState, tool: Json, query: str, options: Json
) -> tuple[Json, ReplyNote | None]:
    """The file search call for ``query``, and the reply's note quoting what it found."""
    hits = _hits(state, tool, query)
    call = {
        "id": new_id("fs"),
        "type": "file_search_call",
        "queries": [query],
        "status": "completed",
        "results": (
            [_result(state, tool, hit) for hit in hits]
            if includes(options, "file_search_call.results")
            else None
        ),
    }
    if not hits:
        return call, None
    best = hits[0]
    files = dict.fromkeys((hit.file_id, hit.filename) for hit in hits)
    cites = tuple(_file_citation(file_id, filename) for file_id, filename in files)
    return call, ReplyNote(f'{best.filename} says: "{best.text}"', cites=cites)


def _hits(state: StandInState, tool: Json, query: str) -> list[Hit]:
    limit = tool.get("max_num_results") or DEFAULT_LIMIT
    threshold = (tool.get("ranking_options") or {}).get("score_threshold", 0.0)
    hits = search(state, tool["vector_store_ids"], query, limit=limit)
    return [hit for hit in hits if hit.score >= threshold]


def _result(state: StandInState, tool: Json, hit: Hit) -> Json:
    return {
        "file_id": hit.file_id,
        "filename": hit.filename,
        "score": hit.score,
        "text": hit.text,
        "attributes": _attributes(state, tool["vector_store_ids"], hit.file_id),
    }


def _attributes(state: StandInState, store_ids: Sequence[str], file_id: str) -> Any:
    """The attributes the file carries in the first searched store that holds it."""
    for store_id in store_ids:
        attached = state.vector_store(store_id).files.get(file_id)
        if attached is not None:
            return attached.attributes
    return None


def _file_citation(file_id: str, filename: str) -> Cite:
    def cite(_start: int, end: int) -> Json:
        # Responses file citations mark a point: where the citation goes in the text.
        return {"type": "file_citation", "file_id": file_id, "filename": filename, "index": end}

    return cite
