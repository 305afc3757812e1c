"""Assembly of the stand-in: the aiohttp app, its lifecycle and the Python API."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from standin.assistants_api import AssistantsApi
from standin.clock import Clock
from standin.config import LiveConfig, StandInConfig
from standin.containers_api import ContainersApi
from standin.control_api import ControlApi
from standin.conversations_api import ConversationsApi
from standin.faults import FaultInjector, FaultRule
from standin.files_api import FilesApi
from standin.journal import Journal
from standin.mcp_tool import mcp_calls
from standin.middleware import v1_middleware
from standin.response_engine import ResponseEngine
from standin.response_models import Conversation, ResponseRecord
from standin.responses_api import ResponsesApi
from standin.run_engine import RunEngine
from standin.runs_api import RunsApi
from standin.state import StandInState
from standin.vector_stores_api import VectorStoresApi
from standin.webhooks import WebhookSender

logger = logging.getLogger(__name__)

_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
# In-flight handlers (slow faults, hanging requests) must not hold up a test's teardown.
_SHUTDOWN_TIMEOUT_S = 1.0


class StandIn:
    """An in-process OpenAI API stand-in listening on a real socket.

    Tests read what clients left behind through these methods, which hand out
    copies in the API's own shapes (or plain dicts) and raise ``KeyError`` for an
    unknown or deleted id:

    - ``conversation_items(conversation_id)``: a conversation's items, oldest
      first, as ``GET /v1/conversations/{id}/items`` shows them (content parts
      included);
    - ``thread_messages(thread_id)``: a thread's messages, oldest first, as the
      Assistants API shows them (``content``, ``attachments``, ``metadata``);
    - ``response(response_id)``: a response as ``GET /v1/responses/{id}`` shows
      it (``metadata``, ``status``, ``output``...);
    - ``response_input_items(response_id)``: the input items that response was
      created with, oldest first;
    - ``files()``: every file ever uploaded, oldest first, deleted ones included,
      each ``{id, filename, purpose, bytes, created_at, deleted}`` (``bytes`` is
      the size); ``file_content(file_id)`` gives a file's bytes, deleted or not;
    - ``vector_stores()``: the vector stores not deleted, oldest first, as
      ``GET /v1/vector_stores/{id}`` shows them; ``vector_store_files(vector_store_id)``
      gives a store's attached files, oldest first, as its files list shows them;
    - ``run_records()``, ``journal``: runs and responses for timing analysis, and
      one entry per ``/v1`` request;
    - ``webhook_attempts()``: every webhook try, oldest first (standin.webhooks), and
      ``webhooks_idle()`` to wait until none is pending; ``webhook_secret`` is the key
      they are signed with.

    ``state`` stays available for anything these do not cover.
    """

    def __init__(self, config: StandInConfig | None = None) -> None:
        self._config = LiveConfig(config or StandInConfig())
        self.state = StandInState()
        self._clock = Clock()
        self._faults = FaultInjector(self._config.current.seed)
        self._journal = Journal()
        self._webhooks = WebhookSender(self._config, self._faults)
        runs = RunEngine(self.state, self._clock, self._config)
        responses = ResponseEngine(
            self.state, self._clock, self._config, on_settled=self._webhooks.notify
        )
        self.app = web.Application(
            middlewares=[v1_middleware(self._faults, self._journal)],
            client_max_size=_MAX_UPLOAD_BYTES,
        )
        apis = (
            AssistantsApi(self.state, runs, self._config),
            RunsApi(self.state, runs, self._config),
            FilesApi(self.state),
            VectorStoresApi(self.state),
            ResponsesApi(self.state, responses, self._config),
            # Its files exist only as responses' code interpreter calls wrote them.
            ContainersApi(self.state),
            ConversationsApi(self.state, responses),
            ControlApi(self),
        )
        for api in apis:
            self.app.add_routes(api.routes())
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    @property
    def config(self) -> StandInConfig:
        return self._config.current

    @property
    def journal(self) -> list[dict[str, Any]]:
        return self._journal.entries

    @property
    def fault_rules(self) -> list[FaultRule]:
        return self._faults.rules

    @property
    def webhook_secret(self) -> str:
        """The ``whsec_`` key webhooks are signed with, for the receiver under test."""
        return self._config.current.webhook_secret

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the stand-in is not running")
        return self._base_url

    def add_faults(self, rules: Iterable[Mapping[str, Any]]) -> None:
        self._faults.add(rules)

    def clear_faults(self) -> None:
        self._faults.clear()

    def clear_journal(self) -> None:
        self._journal.clear()

    def update_config(self, changes: Mapping[str, Any]) -> StandInConfig:
        config = self._config.current.updated(changes)
        self._config.current = config
        if "seed" in changes:
            self._faults.reseed(config.seed)
        return config

    def reset(self) -> None:
        """Forget everything: state, pending timers and webhooks, faults and the journal."""
        self._clock.cancel_all()
        self._release_waiters()
        self.state.clear()
        self._faults.clear()
        self._faults.reseed(self._config.current.seed)
        self._journal.clear()
        self._webhooks.reset()

    def _release_waiters(self) -> None:
        """Answer non-background creates whose response will never settle now."""
        for response in self.state.responses.values():
            response.settled.set()

    def webhook_attempts(self) -> list[dict[str, Any]]:
        """Every webhook try, oldest first: ``{event_id, webhook_id, type, response_id,
        attempt, status, fault, at}``; ``status`` is None when no answer came back."""
        return self._webhooks.attempts()

    async def webhooks_idle(self, timeout_s: float = 5.0) -> None:
        """Wait until no webhook is queued or awaiting a retry (``TimeoutError`` after
        ``timeout_s``); events held back by ``webhook_reorder`` do not count."""
        await self._webhooks.idle(timeout_s)

    def run_records(self) -> list[dict[str, Any]]:
        """Every run and response ever created, oldest first."""
        records = [run.record() for run in self.state.runs.values()]
        records += [response.record() for response in self.state.responses.values()]
        return sorted(records, key=lambda record: float(record["created_at"]))

    def conversation_items(self, conversation_id: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self._conversation(conversation_id).items)

    def thread_messages(self, thread_id: str) -> list[dict[str, Any]]:
        thread = self.state.threads.get(thread_id)
        if thread is None:
            raise KeyError(f"no thread {thread_id!r} in the stand-in")
        return [copy.deepcopy(message.to_api()) for message in thread.messages]

    def response(self, response_id: str) -> dict[str, Any]:
        return copy.deepcopy(self._response(response_id).to_api())

    def mcp_calls(self) -> list[dict[str, Any]]:
        """Every MCP call settled responses made, oldest first: where it went, its arguments
        and output, and whether a token or headers were sent (never their values)."""
        return mcp_calls(self.state.responses.values())

    def response_input_items(self, response_id: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self._response(response_id).input_items)

    def files(self) -> list[dict[str, Any]]:
        return [stored.inspect() for stored in self.state.files.values()]

    def file_content(self, file_id: str) -> bytes:
        stored = self.state.files.get(file_id)
        if stored is None:
            raise KeyError(f"no file {file_id!r} was uploaded to the stand-in")
        return stored.content

    def vector_stores(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(store.to_api()) for store in self.state.vector_stores.values()]

    def vector_store_files(self, vector_store_id: str) -> list[dict[str, Any]]:
        store = self.state.vector_stores.get(vector_store_id)
        if store is None:
            raise KeyError(f"no vector store {vector_store_id!r} in the stand-in")
        return [copy.deepcopy(attached.to_api()) for attached in store.files.values()]

    def _conversation(self, conversation_id: str) -> Conversation:
        conversation = self.state.conversations.get(conversation_id)
        if conversation is None:
            raise KeyError(f"no conversation {conversation_id!r} in the stand-in")
        return conversation

    def _response(self, response_id: str) -> ResponseRecord:
        response = self.state.responses.get(response_id)
        if response is None:
            raise KeyError(f"no response {response_id!r} in the stand-in")
        return response

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port); returns the ``/v1`` base URL."""
        if self._runner is not None:
            raise RuntimeError("the stand-in is already running")
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        self._webhooks.start()
        bound_port = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        self._base_url = f"http://{url_host}:{bound_port}/v1"
        return self._base_url

    async def stop(self) -> None:
        self._clock.cancel_all()
        self._release_waiters()
        if self._runner is not None:
            await self._runner.cleanup()
        await self._webhooks.stop()
        self._runner = None
        self._base_url = None


async def serve(config: StandInConfig, host: str, port: int) -> None:
    """Run a stand-in until cancelled (the ``assistant-worker standin`` command)."""
    standin = StandIn(config)
    base_url = await standin.start(host, port)
    logger.info("OpenAI stand-in listening on %s", base_url)
    try:
        await asyncio.Event().wait()
    finally:
        await standin.stop()
