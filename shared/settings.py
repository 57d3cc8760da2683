"""Typed, validated app settings: the only module that reads ``os.environ``.

Settings are validated on first use rather than at import: an exception while the worker indexes
``function_app.py`` is swallowed by the host ("0 functions found"), whereas an error raised by the
first invocation names the bad setting in the invocation log.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

AZURITE_CONNECTION_STRING = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    # The Azurite well-known development key: public, documented, not a secret.
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)

_CONTAINER_RE = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")
_TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_PIPELINE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_BLOB_SOURCES = ("EventGrid", "LogsAndContainerScan")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and says what is wrong."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"Setting {name}: {problem}")
        self.setting = name


@dataclass(frozen=True)
class Settings:
    """Everything the app is configured with. Build with :meth:`from_env`."""

    storage_connection: str = field(repr=False)
    bes_jobs_url: str
    bes_api_key: str = field(repr=False)
    training_container: str = "training-data"
    models_container: str = "models"
    bes_input_name: str = "input1"
    bes_model_output: str = "output1"
    bes_evaluation_output: str = "output2"
    bes_global_parameters: Mapping[str, object] = field(default_factory=dict)
    runs_table: str = "retrainingruns"
    pipeline: str = "default"
    job_timeout_minutes: int = 120
    max_attempts: int = 3
    http_timeout_seconds: float = 30.0
    training_blob_source: str = "EventGrid"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate settings; raise :class:`SettingsError` naming the first bad one."""
        env = os.environ if env is None else env

        def get(name: str, default: str | None = None) -> str:
            value = env.get(name)
            if value is None or value.strip() == "":
                if default is None:
                    raise SettingsError(name, "is required but not set")
                return default
            value = value.strip()
            if value.startswith("@Microsoft.KeyVault("):
                raise SettingsError(
                    name, "is an unresolved Key Vault reference; check the app's identity and the secret"
                )
            return value

        def container(name: str, default: str) -> str:
            value = get(name, default)
            if not _CONTAINER_RE.match(value):
                raise SettingsError(
                    name, f"{value!r} is not a valid container name (3-63 lowercase letters, digits, single hyphens)"
                )
            return value

        def integer(name: str, default: int, low: int, high: int) -> int:
            raw = get(name, str(default))
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(name, f"{raw!r} is not a whole number") from None
            if not low <= value <= high:
                raise SettingsError(name, f"{value} is outside {low}..{high}")
            return value

        def output_name(name: str, default: str) -> str:
            value = get(name, default)
            if len(value) > 256 or any(c in value for c in '"\\'):
                raise SettingsError(name, f"{value!r} is not a usable web service input/output name")
            return value

        storage = get("AzureWebJobsStorage")
        storage = AZURITE_CONNECTION_STRING if storage == "UseDevelopmentStorage=true" else storage
        if "AccountName=" not in storage or "AccountKey=" not in storage:
            raise SettingsError(
                "AzureWebJobsStorage",
                "must be a storage connection string with AccountName and AccountKey (or UseDevelopmentStorage=true)",
            )

        raw_params = get("BES_GLOBAL_PARAMETERS", "{}")
        try:
            params = json.loads(raw_params)
        except json.JSONDecodeError as exc:
            raise SettingsError("BES_GLOBAL_PARAMETERS", f"is not valid JSON ({exc.msg})") from None
        if not isinstance(params, dict) or not all(isinstance(v, (str, int, float, bool)) for v in params.values()):
            raise SettingsError("BES_GLOBAL_PARAMETERS", "must be a JSON object of names to string/number values")

        runs_table = get("RUNS_TABLE", "retrainingruns")
        if not _TABLE_RE.match(runs_table) or runs_table.lower() == "tables":
            raise SettingsError("RUNS_TABLE", f"{runs_table!r} is not a valid table name (3-63 letters/digits)")

        pipeline = get("PIPELINE_NAME", "default")
        if not _PIPELINE_RE.match(pipeline):
            raise SettingsError("PIPELINE_NAME", f"{pipeline!r} must be lowercase letters, digits and hyphens")

        source = get("TRAINING_BLOB_SOURCE", "EventGrid")
        if source not in _BLOB_SOURCES:
            raise SettingsError("TRAINING_BLOB_SOURCE", f"{source!r} is not one of {', '.join(_BLOB_SOURCES)}")

        timeout_raw = get("HTTP_TIMEOUT_SECONDS", "30")
        try:
            http_timeout = float(timeout_raw)
        except ValueError:
            raise SettingsError("HTTP_TIMEOUT_SECONDS", f"{timeout_raw!r} is not a number") from None
        if not 1 <= http_timeout <= 300:
            raise SettingsError("HTTP_TIMEOUT_SECONDS", f"{http_timeout} is outside 1..300")

        training = container("TRAINING_CONTAINER", "training-data")
        models = container("MODELS_CONTAINER", "models")
        if training == models:
            raise SettingsError("MODELS_CONTAINER", "must differ from TRAINING_CONTAINER (outputs would retrigger)")

        outputs = {
            "BES_MODEL_OUTPUT": output_name("BES_MODEL_OUTPUT", "output1"),
            "BES_EVALUATION_OUTPUT": output_name("BES_EVALUATION_OUTPUT", "output2"),
        }
        if outputs["BES_MODEL_OUTPUT"] == outputs["BES_EVALUATION_OUTPUT"]:
            raise SettingsError("BES_EVALUATION_OUTPUT", "must differ from BES_MODEL_OUTPUT")

        return cls(
            storage_connection=storage,
            bes_jobs_url=jobs_url(get("BES_JOBS_URL")),
            bes_api_key=get("BES_API_KEY"),
            training_container=training,
            models_container=models,
            bes_input_name=output_name("BES_INPUT_NAME", "input1"),
            bes_model_output=outputs["BES_MODEL_OUTPUT"],
            bes_evaluation_output=outputs["BES_EVALUATION_OUTPUT"],
            bes_global_parameters=params,
            runs_table=runs_table,
            pipeline=pipeline,
            job_timeout_minutes=integer("JOB_TIMEOUT_MINUTES", 120, 1, 7 * 24 * 60),
            max_attempts=integer("MAX_ATTEMPTS", 3, 1, 20),
            http_timeout_seconds=http_timeout,
            training_blob_source=source,
        )


def jobs_url(raw: str, name: str = "BES_JOBS_URL") -> str:
    """Normalise a BES ``.../jobs`` URL (ADF accepts it with or without ``?api-version=2.0``).

    Plain ``http`` is refused except on loopback (the local emulator): the API key travels in a header.
    """
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(name, f"{raw!r} is not an http(s) URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise SettingsError(name, "must use https (plain http is allowed only for a local emulator)")
    path = parts.path.rstrip("/")
    if not path.endswith("/jobs"):
        raise SettingsError(name, "must be the training web service's .../jobs URL")
    if parts.query and parts.query != "api-version=2.0":
        raise SettingsError(name, f"unexpected query {parts.query!r} (only api-version=2.0 is allowed)")
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def blob_trigger_source(env: Mapping[str, str] | None = None) -> str:
    """The blob trigger's source, read at indexing time (a decorator argument, not a binding expression).

    Flex Consumption supports only ``EventGrid``; ``func start`` against Azurite needs
    ``LogsAndContainerScan`` because Azurite emits no Event Grid events.
    """
    env = os.environ if env is None else env
    source = (env.get("TRAINING_BLOB_SOURCE") or "EventGrid").strip()
    return source if source in _BLOB_SOURCES else "EventGrid"


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, validated once."""
    return Settings.from_env()
