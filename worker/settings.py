"""All configuration, declared once and read from the environment at start-up."""

from __future__ import annotations

import socket
from enum import StrEnum
from typing import Annotated

from pydantic import AliasChoices, Field, PositiveInt, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class BackendName(StrEnum):
    ASSISTANTS = "assistants"
    RESPONSES = "responses"


class Topology(BaseSettings):
    """Names of the RabbitMQ objects the worker declares and uses."""

    model_config = SettingsConfigDict(env_prefix="AW_", extra="ignore", frozen=True)

    inbound_exchange: str = "assistant.inbound"
    inbound_queue: str = "assistant.user_messages"
    inbound_routing_key: str = "user_message.v1"
    outbound_exchange: str = "assistant.outbound"
    reply_queue: str = "assistant.replies"
    reply_routing_key: str = "assistant_reply.v1"
    dead_letter_exchange: str = "assistant.dead_letter"
    dead_letter_queue: str = "assistant.dead_letter"
    # Redeliveries before RabbitMQ itself dead-letters a message that keeps crashing workers.
    delivery_limit: PositiveInt = 20


class Settings(BaseSettings):
    """Worker settings; every field is an environment variable named AW_<FIELD> unless noted."""

    model_config = SettingsConfigDict(
        env_prefix="AW_", extra="ignore", frozen=True, populate_by_name=True
    )

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/assistant_worker")

    openai_base_url: str = Field(
        "http://127.0.0.1:8900/v1",
        validation_alias=AliasChoices("AW_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
    )
    openai_api_key: SecretStr = Field(
        SecretStr("sk-standin"),
        validation_alias=AliasChoices("AW_OPENAI_API_KEY", "OPENAI_API_KEY"),
    )
    openai_timeout_s: Annotated[float, Field(gt=0)] = 30.0

    # The backend for conversations seen for the first time; known ones keep theirs.
    backend: BackendName = BackendName.RESPONSES
    assistant_id: str = "asst_default"
    model: str = "gpt-4o-mini"
    instructions: str = "You are a helpful helpdesk assistant."
    prompt_id: str | None = None

    concurrency: PositiveInt = 32
    # How late the event loop may run before work that can wait (starting conversations,
    # polling runs) is held back so that finished runs are answered first (worker/pacing.py).
    loop_lag_limit_ms: PositiveInt = 10
    batch_max_events: PositiveInt = 16

    poll_initial_ms: PositiveInt = 100
    poll_max_ms: PositiveInt = 2000
    poll_growth: Annotated[float, Field(ge=1.0)] = 1.5
    run_deadline_s: Annotated[float, Field(gt=0)] = 600.0
    run_attempts: PositiveInt = 3

    # A failure no other class covers (a bug, bad data the schema let through): the event or
    # batch is tried this many times, with capped exponential backoff, then dead-lettered as
    # `internal_error`, so one poisoned event never wedges its conversation.
    internal_attempts: PositiveInt = 4
    internal_backoff_base_s: Annotated[float, Field(gt=0)] = 1.0
    internal_backoff_cap_s: Annotated[float, Field(gt=0)] = 30.0

    # Inline attachments (decoded bytes), checked at intake before anything is stored.
    attachment_max_bytes: PositiveInt = 10 * 1024 * 1024
    event_attachments_max_bytes: PositiveInt = 20 * 1024 * 1024

    api_attempts: PositiveInt = 6
    api_backoff_base_s: Annotated[float, Field(gt=0)] = 0.5
    api_backoff_cap_s: Annotated[float, Field(gt=0)] = 30.0

    lease_ttl_s: Annotated[float, Field(gt=0)] = 15.0
    sweep_interval_s: Annotated[float, Field(gt=0)] = 5.0
    outbox_interval_s: Annotated[float, Field(gt=0)] = 1.0
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 25.0

    health_host: str = "0.0.0.0"  # noqa: S104 - probes come from the kubelet, not localhost
    health_port: Annotated[int, Field(ge=0, le=65535)] = 8080  # 0: any free port
    worker_name: str = Field(default_factory=socket.gethostname)
    log_format: str = "auto"
    log_level: str = "info"
    declare_topology: bool = True
    topology: Topology = Field(default_factory=Topology)
