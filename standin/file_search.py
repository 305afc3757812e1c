"""The ``file_search`` tool: a deterministic keyword search over vector stores' files.

There are no embeddings. A document is the UTF-8 text of a File attached to a
searched store (other files are skipped), a passage is one of its paragraphs
(split at blank lines), and a passage matches on the query's distinct words
(lowercased letters and digits, at least three characters, minus a few stopwords).
Both engines call :func:`search`, so runs and responses find the same passages.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from standin.state import StandInState

_WORD = re.compile(r"[^\W_]+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
_MIN_WORD_CHARS = 3
DEFAULT_LIMIT = 3
_STOPWORDS = frozenset(
    {
        "the", "and", "for", "are", "but", "not", "you", "your", "with", "this", "that",
        "from", "have", "has", "had", "was", "were", "what", "when", "where", "which", "who",
        "how", "why", "can", "could", "would", "should", "will", "does", "did", "about",
        "into", "its", "our", "they", "them", "their", "there", "then", "than", "been", "any",
        "all", "also", "just", "some",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Hit:
    """One passage found, with the file it came from.

    ``score`` is the share of the query's distinct words the passage holds, so it
    lies in (0, 1] as the API's scores do and ranks passages by how many they hold.
    """

    file_id: str
    filename: str
    text: str  # the passage (a paragraph of the document) that matched best
    score: float


def search(
    state: StandInState, vector_store_ids: Sequence[str], query: str, *, limit: int = DEFAULT_LIMIT
) -> list[Hit]:
    """The best ``limit`` passages of the stores' files for ``query``, best first.

    Ties go to the earlier file (stores in the order given, files in the order
    attached) and then to the earlier passage. Passages holding none of the
    query's words are no hits. An unknown store is the API's 404.
    """
    stores = [state.vector_store(vector_store_id) for vector_store_id in vector_store_ids]
    terms = query_terms(query)
    file_ids = dict.fromkeys(file_id for store in stores for file_id in store.files)
    scored: list[tuple[int, int, Hit]] = []
    for position, (file_id, passage) in enumerate(_passages(state, file_ids)):
        matched = len(terms & query_terms(passage))
        if matched:
            filename = state.files[file_id].filename
            hit = Hit(file_id, filename, passage, matched / len(terms))
            scored.append((-matched, position, hit))
    scored.sort(key=lambda entry: entry[:2])
    return [hit for _, _, hit in scored[: max(limit, 0)]]


def query_terms(text: str) -> frozenset[str]:
    """The words a text is matched on."""
    words = _WORD.findall(text.lower())
    return frozenset(
        word for word in words if len(word) >= _MIN_WORD_CHARS and word not in _STOPWORDS
    )


def document_text(content: bytes) -> str | None:
    """A file's text as search reads it, or None for a file that is not UTF-8 text."""
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _passages(state: StandInState, file_ids: Iterable[str]) -> Iterator[tuple[str, str]]:
    for file_id in file_ids:
        text = document_text(state.files[file_id].content)
        if text is None:
            continue
        for paragraph in _PARAGRAPH_BREAK.split(text):
            passage = paragraph.strip()
            if passage:
                yield file_id, passage
