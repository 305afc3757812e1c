"""Cursor pagination as the OpenAI list endpoints do it.

Items are kept in creation order, which is the ``created_at`` order the API
sorts by; cursors are object ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from standin.errors import bad_request

T = TypeVar("T")


@dataclass(frozen=True)
class PageQuery:
    limit: int
    order: Literal["asc", "desc"]
    after: str | None
    before: str | None

    @classmethod
    def parse(
        cls,
        query: Mapping[str, str],
        *,
        default_limit: int = 20,
        max_limit: int = 100,
    ) -> PageQuery:
        return cls(
            limit=_parse_limit(query.get("limit"), default_limit, max_limit),
            order=_parse_order(query.get("order", "desc")),
            after=query.get("after") or None,
            before=query.get("before") or None,
        )


def _parse_limit(raw: str | None, default: int, maximum: int) -> int:
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise bad_request("'limit' must be an integer.", param="limit") from None
    if not 1 <= limit <= maximum:
        raise bad_request(f"'limit' must be between 1 and {maximum}.", param="limit")
    return limit


def _parse_order(raw: str) -> Literal["asc", "desc"]:
    if raw == "asc":
        return "asc"
    if raw == "desc":
        return "desc"
    raise bad_request("'order' must be 'asc' or 'desc'.", param="order")


def paginate(
    items: Sequence[T], id_of: Callable[[T], str], query: PageQuery
) -> tuple[list[T], bool]:
    """Return one page and whether more items lie beyond it in the walk direction."""
    ordered = list(items) if query.order == "asc" else list(reversed(items))
    if query.after is not None:
        ordered = ordered[_index(ordered, id_of, query.after, "after") + 1 :]
    if query.before is not None:
        ordered = ordered[: _index(ordered, id_of, query.before, "before")]
        # Walking backwards, the page is the stretch right next to the cursor.
        if query.after is None:
            return ordered[-query.limit :], len(ordered) > query.limit
    return ordered[: query.limit], len(ordered) > query.limit


def _index(items: Sequence[T], id_of: Callable[[T], str], cursor: str, param: str) -> int:
    for index, item in enumerate(items):
        if id_of(item) == cursor:
            return index
    raise bad_request(f"No object found for cursor '{cursor}'.", param=param)


def list_body(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
