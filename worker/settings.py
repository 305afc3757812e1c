"""All configuration, declared once and read from the environment at start-up."""

from __future__ import annotations

import difflib
import os
import socket
import warnings
from collections.abc import Collection, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, BeforeValidator, Field, PositiveInt, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as SourceError

SECRETS_DIR_VARIABLE = "AW_SECRETS_DIR"


class EventLoop(StrEnum):
    """Which event loop runs the process (AW_EVENT_LOOP)."""

    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


class BackendName(StrEnum):
    """Which model API answers a conversation: recorded per conversation on first contact, so a
    change of AW_BACKEND never moves a conversation half-way."""

    ASSISTANTS = "assistants"
    RESPONSES = "responses"


class LogLevel(StrEnum):
    """The levels AW_LOG_LEVEL accepts (in any case): a closed set, so a typo stops the worker at
    start instead of silencing its logs."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class LogFormat(StrEnum):
    """How log records are written (AW_LOG_FORMAT); `auto` is JSON unless stderr is a terminal
    (worker/logging.py)."""

    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _url_with_scheme(*schemes: str) -> BeforeValidator:
    """Rejects a URL of another kind without quoting it: it may carry a password."""

    def check(value: Any) -> Any:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str) and not text.startswith(tuple(f"{s}://" for s in schemes)):
            raise ValueError(
                f"should be a URL starting with {' or '.join(f'{s}://' for s in schemes)}"
            )
        return value

    return BeforeValidator(check)


def _secrets_dir() -> Path | None:
    # Read straight from the environment, not through the field: the files are a source of the
    # fields, so the directory must be known before any field is. Empty counts as unset.
    wanted = SECRETS_DIR_VARIABLE.lower()
    value = next((v for k, v in os.environ.items() if k.lower() == wanted), "")
    return Path(value) if value else None


class SecretFiles(SecretsSettingsSource):
    """Settings from the files in AW_SECRETS_DIR, one per variable and named like it (a
    Kubernetes Secret mounted as a volume), so that secrets need not sit in the environment.

    Below the environment: a variable that is set, under any of its names, wins over a file
    (pydantic-settings keys every source's value by the field's first name, so the first source
    that has it wins). pydantic-settings strips the whitespace around a file's content (`kubectl
    create secret --from-file` keeps a trailing newline). Fails closed where pydantic-settings
    would warn and fall back to the default: a directory that is not there, or a file that
    cannot be read, is InvalidSettings naming the variable, never the content.
    """

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        self._directory = _secrets_dir()
        super().__init__(settings_cls, secrets_dir=self._directory)

    def __call__(self) -> dict[str, Any]:
        if self._directory is None:
            return {}
        try:
            os.listdir(self._directory)
        except FileNotFoundError:
            reason = "no such directory"
        except NotADirectoryError:
            reason = "not a directory"
        except OSError as exc:
            reason = f"cannot list it ({exc.strerror})"
        else:
            return super().__call__()
        shown = _short(str(self._directory))
        raise InvalidSettings(f"invalid setting {SECRETS_DIR_VARIABLE}={shown}: {reason}")

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = None
        if field_name != "secrets_dir" and self._directory is not None:
            variable = self._file_variable(field_name, self._directory)
        if variable is None:
            return None, field_name, False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                found = super().get_field_value(field, field_name)
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
                raise _unreadable(variable, str(reason)) from None
        if caught:  # a link out of the secrets directory
            raise _unreadable(variable, "not a file inside the directory")
        return found

    def _file_variable(self, field_name: str, directory: Path) -> str | None:
        """The variable whose file holds the field, if any; InvalidSettings if that is no file
        (a directory, a dangling link: pydantic-settings would trip on an assertion)."""
        for variable in _field_variables(self.settings_cls, field_name):
            path = self.find_case_path(directory, variable, case_sensitive=False)
            if path is not None and not path.is_file():
                raise _unreadable(variable, "not a file")
            if path is not None:
                return variable
        return None


def _unreadable(variable: str, reason: str) -> InvalidSettings:
    return InvalidSettings(
        f"invalid setting {variable}: its file in {SECRETS_DIR_VARIABLE} cannot be read ({reason})"
    )


class _FromEnvironmentAndFiles(BaseSettings):
    """The sources of every settings model: arguments, the environment, then AW_SECRETS_DIR."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, dotenv_settings, SecretFiles(settings_cls)


class Topology(_FromEnvironmentAndFiles):
    """Names of the RabbitMQ objects the worker declares and uses."""

    model_config = SettingsConfigDict(env_prefix="AW_", extra="ignore", frozen=True)

    inbound_exchange: str = "assistant.inbound"
    inbound_queue: str = "assistant.user_messages"
    inbound_routing_key: str = "user_message.v1"
    # Bound to the same queue, so control events keep their place among a conversation's messages.
    control_routing_key: str = "conversation_control.v1"
    outbound_exchange: str = "assistant.outbound"
    reply_queue: str = "assistant.replies"
    reply_routing_key: str = "assistant_reply.v1"
    handoff_queue: str = "assistant.handoffs"
    handoff_routing_key: str = "assistant_handoff.v1"
    dead_letter_exchange: str = "assistant.dead_letter"
    dead_letter_queue: str = "assistant.dead_letter"
    # Redeliveries before RabbitMQ itself dead-letters a message that keeps crashing workers.
    delivery_limit: PositiveInt = 20


class Settings(_FromEnvironmentAndFiles):
    """Worker settings; every field is an environment variable named AW_<FIELD> unless noted,
    or a file of that name in AW_SECRETS_DIR (SecretFiles)."""

    model_config = SettingsConfigDict(
        env_prefix="AW_", extra="ignore", frozen=True, populate_by_name=True
    )

    amqp_url: Annotated[SecretStr, _url_with_scheme("amqp", "amqps")] = SecretStr(
        "amqp://guest:guest@127.0.0.1:5672/"
    )
    database_url: Annotated[SecretStr, _url_with_scheme("postgresql", "postgres")] = SecretStr(
        "postgresql://postgres@127.0.0.1:5432/assistant_worker"
    )

    # OpenAI itself: pointing at the stand-in is something tests and the demo say out loud.
    openai_base_url: Annotated[str, _url_with_scheme("https", "http")] = Field(
        "https://api.openai.com/v1",
        validation_alias=AliasChoices("AW_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
    )
    # Empty means "not configured": `run` refuses to start without a key, while commands that
    # never call the API (migrate, dlq, prune, conversations) do not need one.
    openai_api_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("AW_OPENAI_API_KEY", "OPENAI_API_KEY"),
    )
    openai_timeout_s: Annotated[float, Field(gt=0)] = 30.0

    # The backend for conversations seen for the first time; known ones keep theirs.
    backend: BackendName = BackendName.RESPONSES
    assistant_id: str = "asst_default"
    model: str = "gpt-4o-mini"
    instructions: str = "You are a helpful helpdesk assistant."
    prompt_id: str | None = None
    # Assistant profiles (TOML); unset: one profile from AW_MODEL and AW_INSTRUCTIONS.
    profiles_file: Path | None = None

    concurrency: PositiveInt = 32
    # How late the event loop may run before work that can wait (starting conversations,
    # polling runs) is held back so that finished runs are answered first (worker/relay/pacing.py).
    loop_lag_limit_ms: PositiveInt = 10
    # At most 20: the Conversations API adds at most 20 items per request, and a held batch's
    # messages are added in one (so that finding them later is all or nothing).
    batch_max_events: Annotated[int, Field(ge=1, le=20)] = 16
    # The first message of a quiet conversation waits for its companions before a run starts:
    # until AW_DEBOUNCE_MS pass without another, at most AW_DEBOUNCE_MAX_MS after the first.
    debounce_ms: Annotated[int, Field(ge=0, le=60_000)] = 250
    debounce_max_ms: Annotated[int, Field(ge=0, le=60_000)] = 2000

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
    log_format: Annotated[LogFormat, BeforeValidator(_lower)] = LogFormat.AUTO
    log_level: Annotated[LogLevel, BeforeValidator(_lower)] = LogLevel.INFO
    declare_topology: bool = True
    # assistant_activity.v1 on the outbound exchange under this routing key; unset: off.
    activity_routing_key: str | None = None

    # Webhooks (Responses backend): the workers learn that a background response ended from
    # the receiver (`assistant-worker webhooks`) through Postgres, instead of polling it; a
    # slow sweep and the deadline remain for deliveries that never come.
    # The asyncio event loop: uvloop's (libuv) by default, 17 % less worker CPU per event on
    # the bench (README, "Benchmarks"); the standard library's with AW_EVENT_LOOP=asyncio.
    event_loop: EventLoop = EventLoop.UVLOOP
    webhooks: bool = False
    webhook_sweep_s: Annotated[float, Field(gt=0)] = 30.0
    # The receiver: OpenAI's signing secret (whsec_...), and the one before it while it is
    # being rotated; the largest body it reads; where it listens.
    openai_webhook_secret: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("AW_WEBHOOK_SECRET", "OPENAI_WEBHOOK_SECRET"),
    )
    webhook_secret_previous: SecretStr = SecretStr("")
    webhook_max_body_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 64 * 1024
    webhook_host: str = "0.0.0.0"  # noqa: S104 - OpenAI posts from outside the pod
    webhook_port: Annotated[int, Field(ge=0, le=65535)] = 8081
    # A directory of files, each holding the setting it is named after (SecretFiles): a
    # Kubernetes Secret mounted as a volume. Unset or empty: settings come from the environment
    # only.
    secrets_dir: Path | None = None
    topology: Topology = Field(default_factory=Topology)

    @property
    def has_api_key(self) -> bool:
        return bool(self.openai_api_key.get_secret_value())


API_KEY_VARIABLES = ("AW_OPENAI_API_KEY", "OPENAI_API_KEY")
# Values never quoted back: keys, and URLs, which may carry a password.
_NEVER_QUOTED = frozenset(
    {
        "amqp_url",
        "database_url",
        "openai_api_key",
        "openai_base_url",
        "openai_webhook_secret",
        "webhook_secret_previous",
    }
)
# Read by the crash-point and fault-injection hooks and by the tests and tools, not settings.
NOT_SETTINGS = frozenset({"AW_CRASH_POINTS", "AW_FAULT_POINTS", "AW_CHAOS_LOG_LEVEL"})
_NOT_SETTINGS_PREFIX = "AW_TEST_"


class InvalidSettings(Exception):
    """The environment holds a value the worker cannot use; the message is one line, names the
    variable and never quotes a secret."""


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment, or InvalidSettings saying which variable is wrong."""
    environ = os.environ if environ is None else environ
    try:
        return Settings()
    except ValidationError as exc:
        raise InvalidSettings(_describe(exc, environ, _secret_file_names())) from None
    except SourceError as exc:
        # pydantic-settings wraps what a source raises: SecretFiles' own message is the one.
        if isinstance(exc.__cause__, InvalidSettings):
            raise exc.__cause__ from None
        # Only a nested model is parsed from JSON, and the only one is the topology.
        raise InvalidSettings(
            "invalid setting AW_TOPOLOGY: should be unset; each queue and exchange has its own "
            "variable (AW_INBOUND_QUEUE, AW_OUTBOUND_EXCHANGE, ...)"
        ) from None


def _secret_file_names() -> list[str]:
    """The names of the files in AW_SECRETS_DIR (upper case), or none if it is unset or gone."""
    directory = _secrets_dir()
    try:
        return [] if directory is None else [name.upper() for name in os.listdir(directory)]
    except OSError:
        return []


def _describe(exc: ValidationError, environ: Mapping[str, str], files: Collection[str]) -> str:
    model: type[BaseSettings] = Topology if exc.title == Topology.__name__ else Settings
    problems = []
    for error in exc.errors(include_url=False):
        field = _field_of(model, str(error["loc"][0]) if error["loc"] else "")
        variable, source = _variable(model, field, environ, files)
        shown = "" if field in _NEVER_QUOTED else f"={_short(error.get('input'))}"
        problems.append(f"{variable}{shown}{source}: {_plain(error['msg'])}")
    return "invalid setting " + "; ".join(problems)


def _field_of(model: type[BaseSettings], loc: str) -> str:
    """The field an error is about; pydantic names aliased fields by their first alias."""
    for name, info in model.model_fields.items():
        if isinstance(info.validation_alias, AliasChoices) and loc in info.validation_alias.choices:
            return name
    return loc


def _variable(
    model: type[BaseSettings], field: str, environ: Mapping[str, str], files: Collection[str]
) -> tuple[str, str]:
    """The variable that supplied `field` (for aliases, the one that is set), and " (file in
    AW_SECRETS_DIR)" if a file did. The environment first: it wins over a file."""
    choices = _field_variables(model, field)
    present = {k.upper() for k in environ}
    for choice in choices:
        if choice in present:
            return choice, ""
    for choice in choices:
        if choice in files:
            return choice, f" (file in {SECRETS_DIR_VARIABLE})"
    return choices[0], ""


def _field_variables(model: type[BaseSettings], field: str) -> list[str]:
    info = model.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        return [c.upper() for c in info.validation_alias.choices if isinstance(c, str)]
    return [f"{model.model_config.get('env_prefix') or ''}{field}".upper()]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _plain(message: str) -> str:
    # "Value error, should be ..." and "Input should be ..." read as "should be ...".
    for prefix in ("Value error, ", "Input "):
        message = message.removeprefix(prefix)
    return message[:1].lower() + message[1:]


def setting_variables() -> frozenset[str]:
    """Every environment variable the settings read (AW_<FIELD> and the aliases)."""
    names: set[str] = set()
    for model in (Settings, Topology):
        for field, info in model.model_fields.items():
            if not (
                isinstance(info.annotation, type) and issubclass(info.annotation, BaseSettings)
            ):
                names.update(_field_variables(model, field))
    return frozenset(names)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """AW_* variables, and files in AW_SECRETS_DIR, that are no setting, each with the closest
    real name (a likely typo)."""
    environ = os.environ if environ is None else environ
    known = setting_variables()
    unknown = []
    for name in sorted({k.upper() for k in environ} | set(_secret_file_names())):
        if not name.startswith("AW_") or name in known or name in NOT_SETTINGS:
            continue
        if name.startswith(_NOT_SETTINGS_PREFIX):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        unknown.append((name, close[0] if close else None))
    return unknown
