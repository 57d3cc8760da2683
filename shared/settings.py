"""Typed, validated app settings: the only module that reads ``os.environ``.

Settings are validated on first use rather than at import: an exception while the worker indexes
``function_app.py`` is swallowed by the host ("0 functions found"), whereas an error raised by the
first invocation names the bad setting in the invocation log.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from shared.gate import Gate

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
_PIPELINES_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")  # a pipeline of PIPELINES: a partition key
_BLOB_SOURCES = ("EventGrid", "LogsAndContainerScan")
_QUEUE_RE = re.compile(r"^(?=.{3,56}$)[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")  # 56: the -poison twin must fit
_TARGET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_PREFIX_BAD = re.compile(r"(^/|\\|(^|/)\.\.?(/|$)|[\x00-\x1f\x7f])")

Target = Any  # a target kind's configuration, e.g. shared.classic.ClassicTarget (see shared/kinds.py)


@dataclass(frozen=True)
class Pipeline:
    """One model's retraining: the uploads it owns (by blob prefix), its trainer, its gate, its targets."""

    name: str
    blob_prefix: str
    trainer: Any  # a trainer kind's configuration, e.g. shared.bes.BesConfig
    targets: tuple[str, ...] = ()
    gate: Gate = field(default_factory=Gate)
    schedule: str | None = None
    preflight: Any = None  # shared.preflight.Rules: what an upload must pass before a job is spent on it


@dataclass(frozen=True)
class StorageIdentity:
    """Identity-based ``AzureWebJobsStorage``: service URIs and the managed identity to use (no key)."""

    blob_uri: str
    queue_uri: str
    table_uri: str
    client_id: str | None = None


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and says what is wrong."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"Setting {name}: {problem}")
        self.setting = name


def fail(what: str, problem: str) -> SettingsError:
    """The error for ``what`` — a setting's name, then where in it (``DEPLOY_TARGETS target 'x' api_key``)."""
    setting, _, where = what.partition(" ")
    return SettingsError(setting, f"{where}: {problem}" if where else problem)


@dataclass(frozen=True)
class ParseContext:
    """What a kind's ``parse_config`` may use: the app settings (to resolve ``api_key_setting``), the
    allowed hosts, and the flat settings' values as defaults."""

    env: Mapping[str, str]
    extra_hosts: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    for_reading: bool = False  # a tool that only reads state: keys it will never use may be absent

    def url(self, raw: object, what: str, kind: str) -> str:
        if not isinstance(raw, str):
            raise fail(what, "must be a URL string")
        return https_url(raw, what, kind, self.extra_hosts)

    def text(self, fields: Mapping[str, Any], name: str, what: str, default: str | None = None) -> str | None:
        """Field ``name`` as a string (``default`` if absent); any other type names the field."""
        value = fields.get(name, default)
        if value is not None and not isinstance(value, str):
            raise fail(f"{what} {name}", f"must be a string, not {type(value).__name__}")
        return value

    def secret(self, fields: Mapping[str, Any], what: str) -> str:
        """A key given inline (``api_key``) or, better, by naming another app setting (``api_key_setting``)
        that may be a Key Vault reference of its own."""
        key = self.text(fields, "api_key", what)
        setting = self.text(fields, "api_key_setting", what)
        if setting is not None:
            key = (self.env.get(setting) or "").strip()
            if not key and not self.for_reading:
                raise SettingsError(setting, f"is required by {what} but not set")
        if not key:
            if self.for_reading:
                return ""
            raise fail(what, "needs api_key or api_key_setting")
        if key.startswith("@Microsoft.KeyVault("):
            raise fail(what, "the API key is an unresolved Key Vault reference")
        return key


def check_fields(fields: Mapping[str, Any], what: str, allowed: set[str], required: set[str]) -> None:
    unknown, missing = set(fields) - allowed, required - set(fields)
    if unknown:
        raise fail(what, f"has unknown field(s) {', '.join(sorted(unknown))}")
    if missing:
        raise fail(what, f"is missing {', '.join(sorted(missing))}")


@dataclass(frozen=True)
class Settings:
    """Everything the app is configured with. Build with :meth:`from_env`."""

    storage_connection: str | None = field(repr=False)
    bes_jobs_url: str | None = None  # the flat pipeline's trainer (with PIPELINES: the default of none)
    bes_api_key: str | None = field(default=None, repr=False)
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
    http_retries: int = 4
    training_blob_source: str = "EventGrid"
    storage_identity: StorageIdentity | None = None
    poll_schedule: str = "0 */1 * * * *"
    resubmit_failed_jobs: bool = False
    gate_metric: str = "AUC"
    gate_min: float | None = None
    gate_min_improvement: float = 0.0
    targets: tuple[Target, ...] = ()
    commands_queue: str = "retraining-commands"
    deploy_sas_days: int = 365
    arm_poll_seconds: float = 5.0
    arm_timeout_seconds: float = 600.0
    retrain_schedule: str | None = None
    retrain_always: bool = False
    debounce_seconds: int = 0
    extra_allowed_hosts: tuple[str, ...] = ()
    pipelines: tuple[Pipeline, ...] = ()
    poll_concurrency: int = 16
    notify: Any = None  # shared.notify.NotifyConfig when an event receiver is configured
    approvals: Mapping[str, int] = field(default_factory=dict)  # target -> hours an approval may wait (manual ones)

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)

    def approval_hours(self, name: str) -> int | None:
        """How long a run may wait for a person's approval on target ``name``; ``None``: no approval needed."""
        return self.approvals.get(name)

    def pipeline_named(self, name: str | None) -> Pipeline | None:
        return next((p for p in self.pipelines if p.name == name), None)

    def route(self, blob_name: str) -> Pipeline | None:
        """The pipeline an upload belongs to: the longest ``blob_prefix`` it starts with (``""`` catches all)."""
        owners = [p for p in self.pipelines if blob_name.startswith(p.blob_prefix)]
        return max(owners, key=lambda p: len(p.blob_prefix), default=None)

    def pipeline_of_target(self, name: str) -> Pipeline | None:
        return next((p for p in self.pipelines if name in p.targets), None)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, for_reading: bool = False) -> Settings:
        """Read and validate settings; raise :class:`SettingsError` naming the first bad one.

        ``for_reading``: for tools that only read the app's state (``runs``, ``targets``, the page): the
        flat trainer's URL and the keys may be absent, since nothing will call those services."""
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
            if not _CONTAINER_RE.fullmatch(value):
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

        def number(name: str, default: float | None, low: float, high: float) -> float | None:
            raw = get(name, "" if default is None else str(default))
            if raw == "":
                return None
            try:
                value = float(raw)
            except ValueError:
                raise SettingsError(name, f"{raw!r} is not a number") from None
            if not low <= value <= high:
                raise SettingsError(name, f"{value} is outside {low}..{high}")
            return value

        def flag(name: str, default: bool) -> bool:
            raw = get(name, "true" if default else "false").lower()
            if raw not in ("true", "false", "1", "0", "yes", "no"):
                raise SettingsError(name, f"{raw!r} is not true or false")
            return raw in ("true", "1", "yes")

        def output_name(name: str, default: str) -> str:
            value = get(name, default)
            if len(value) > 256 or any(c in value for c in '"\\'):
                raise SettingsError(name, f"{value!r} is not a usable web service input/output name")
            return value

        from shared import hosts

        try:
            extra = hosts.parse_extra(env.get("EXTRA_ALLOWED_HOSTS"))
        except hosts.HostRefused as exc:
            raise SettingsError("EXTRA_ALLOWED_HOSTS", str(exc)) from None

        storage, identity = None, None
        if (env.get("AzureWebJobsStorage") or "").strip():
            storage = get("AzureWebJobsStorage")
            storage = AZURITE_CONNECTION_STRING if storage == "UseDevelopmentStorage=true" else storage
            if "AccountName=" not in storage or "AccountKey=" not in storage:
                raise SettingsError(
                    "AzureWebJobsStorage",
                    "must be a storage connection string with AccountName and AccountKey "
                    "(or UseDevelopmentStorage=true), or be left unset for an identity-based connection "
                    "(AzureWebJobsStorage__accountName or __blobServiceUri/__queueServiceUri/__tableServiceUri)",
                )
        else:
            identity = storage_identity(env, extra)

        raw_params = get("BES_GLOBAL_PARAMETERS", "{}")
        try:
            params = json.loads(raw_params)
        except json.JSONDecodeError as exc:
            raise SettingsError("BES_GLOBAL_PARAMETERS", f"is not valid JSON ({exc.msg})") from None
        if not isinstance(params, dict) or not all(isinstance(v, (str, int, float, bool)) for v in params.values()):
            raise SettingsError("BES_GLOBAL_PARAMETERS", "must be a JSON object of names to string/number values")

        runs_table = get("RUNS_TABLE", "retrainingruns")
        if not _TABLE_RE.fullmatch(runs_table) or runs_table.lower() == "tables":
            raise SettingsError("RUNS_TABLE", f"{runs_table!r} is not a valid table name (3-63 letters/digits)")

        configured = (env.get("PIPELINES") or "").strip()
        pipeline = get("PIPELINE_NAME", "default")
        if not _PIPELINE_RE.fullmatch(pipeline):
            raise SettingsError("PIPELINE_NAME", f"{pipeline!r} must be lowercase letters, digits and hyphens")
        if configured:
            for flat in ("PIPELINE_NAME", "RETRAIN_SCHEDULE", "PREFLIGHT"):
                if (env.get(flat) or "").strip():
                    raise SettingsError(flat, "is for the single pipeline; with PIPELINES, set it on each pipeline")

        source = get("TRAINING_BLOB_SOURCE", "EventGrid")
        if source not in _BLOB_SOURCES:
            raise SettingsError("TRAINING_BLOB_SOURCE", f"{source!r} is not one of {', '.join(_BLOB_SOURCES)}")

        http_timeout = number("HTTP_TIMEOUT_SECONDS", 30.0, 1, 300)

        poll_schedule = get("POLL_SCHEDULE", "0 */1 * * * *")
        if len(poll_schedule.split()) != 6:
            raise SettingsError(
                "POLL_SCHEDULE",
                f"{poll_schedule!r} is not an NCRONTAB expression with six fields "
                "(seconds first, e.g. '0 */1 * * * *')",
            )
        queue = get("COMMANDS_QUEUE", "retraining-commands")
        if not _QUEUE_RE.fullmatch(queue):
            raise SettingsError(
                "COMMANDS_QUEUE",
                f"{queue!r} is not a valid queue name (3-56 lowercase letters, "
                "digits, single hyphens; its -poison twin must fit 63)",
            )

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

        # With PIPELINES, each pipeline names its own training service: the flat one is optional.
        flat_url = get("BES_JOBS_URL", "" if configured or for_reading else None)
        flat_key = get("BES_API_KEY", "" if configured or for_reading else None)
        approvals: dict[str, int] = {}
        targets = parse_targets(get("DEPLOY_TARGETS", "[]"), env, extra, for_reading=for_reading, approvals=approvals)
        gate = Gate(
            get("GATE_METRIC", "AUC"),
            number("GATE_MIN", None, -1e9, 1e9),
            number("GATE_MIN_IMPROVEMENT", 0.0, -1e9, 1e9),
        )
        bes_defaults = {
            "input_name": output_name("BES_INPUT_NAME", "input1"),
            "model_output": outputs["BES_MODEL_OUTPUT"],
            "evaluation_output": outputs["BES_EVALUATION_OUTPUT"],
            "global_parameters": params,
        }
        context = ParseContext(env, extra, {"bes": bes_defaults, "gate": gate}, for_reading)
        if configured:
            pipelines = parse_pipelines(configured, targets, context)
        else:
            from shared import preflight
            from shared.bes import BesConfig

            trainer = BesConfig(jobs_url(flat_url, extra=extra) if flat_url else "", flat_key, **bes_defaults)
            schedule = retrain_schedule(env, strict=True)
            raw_rules = get("PREFLIGHT", "{}")
            try:
                rules = preflight.parse_rules(json.loads(raw_rules), "PREFLIGHT")
            except json.JSONDecodeError as exc:
                raise SettingsError("PREFLIGHT", f"is not valid JSON ({exc.msg})") from None
            flat = Pipeline(pipeline, "", trainer, tuple(t.name for t in targets), gate, schedule, rules)
            pipelines = (check_served(flat, targets, "DEPLOY_TARGETS"),)

        settings = cls(
            storage_connection=storage,
            storage_identity=identity,
            bes_jobs_url=jobs_url(flat_url, extra=extra) if flat_url else None,
            bes_api_key=flat_key or None,
            training_container=training,
            models_container=models,
            bes_input_name=bes_defaults["input_name"],
            bes_model_output=outputs["BES_MODEL_OUTPUT"],
            bes_evaluation_output=outputs["BES_EVALUATION_OUTPUT"],
            bes_global_parameters=params,
            runs_table=runs_table,
            pipeline=pipelines[0].name,
            job_timeout_minutes=integer("JOB_TIMEOUT_MINUTES", 120, 1, 7 * 24 * 60),
            max_attempts=integer("MAX_ATTEMPTS", 3, 1, 20),
            http_timeout_seconds=http_timeout,
            http_retries=integer("HTTP_RETRIES", 4, 0, 10),
            training_blob_source=source,
            poll_schedule=poll_schedule,
            resubmit_failed_jobs=flag("RESUBMIT_FAILED_JOBS", False),
            gate_metric=gate.metric,
            gate_min=gate.min,
            gate_min_improvement=gate.min_improvement,
            targets=targets,
            extra_allowed_hosts=extra,
            pipelines=pipelines,
            poll_concurrency=integer("POLL_CONCURRENCY", 16, 1, 64),
            commands_queue=queue,
            deploy_sas_days=integer("DEPLOY_SAS_DAYS", 365, 1, 3650),
            arm_poll_seconds=number("ARM_POLL_SECONDS", 5.0, 0.05, 60),
            arm_timeout_seconds=number("ARM_TIMEOUT_SECONDS", 600.0, 1, 3600),
            retrain_schedule=pipelines[0].schedule if not configured else None,
            retrain_always=flag("RETRAIN_ALWAYS", False),
            debounce_seconds=integer("DEBOUNCE_SECONDS", 0, 0, 24 * 3600),
            notify=notify_config(env, extra, queue, get),
            approvals=approvals,
        )
        hold_secrets(settings, env)
        return settings


def notify_config(env: Mapping[str, str], extra: tuple[str, ...], commands_queue: str, get=None):
    """``NOTIFY_*``: an Event Grid topic and/or a signed webhook; ``None`` when neither is set."""
    topic = (env.get("NOTIFY_EVENTGRID_TOPIC") or "").strip()
    webhook = (env.get("NOTIFY_WEBHOOK_URL") or "").strip()
    if not topic and not webhook:
        return None
    from shared.notify import NotifyConfig

    queue = (env.get("NOTIFY_QUEUE") or "").strip() or "retraining-events"
    if not _QUEUE_RE.fullmatch(queue) or queue == commands_queue:
        raise SettingsError("NOTIFY_QUEUE", f"{queue!r} must be a valid queue name other than COMMANDS_QUEUE")
    secret = (env.get("NOTIFY_WEBHOOK_SECRET") or "").strip() or None
    if webhook and (secret is None or len(secret) < 16):
        raise SettingsError("NOTIFY_WEBHOOK_SECRET", "is required with NOTIFY_WEBHOOK_URL: at least 16 characters")
    key = (env.get("NOTIFY_EVENTGRID_KEY") or "").strip() or None
    for name, value in (("NOTIFY_WEBHOOK_SECRET", secret), ("NOTIFY_EVENTGRID_KEY", key)):
        if value and value.startswith("@Microsoft.KeyVault("):
            raise SettingsError(name, "is an unresolved Key Vault reference; check the app's identity and the secret")
    site = (env.get("WEBSITE_SITE_NAME") or "local").strip()
    return NotifyConfig(
        queue=queue,
        eventgrid_topic=https_url(topic, "NOTIFY_EVENTGRID_TOPIC", "eventgrid", extra) if topic else None,
        eventgrid_key=key,
        webhook_url=https_url(webhook, "NOTIFY_WEBHOOK_URL", "webhook", extra) if webhook else None,
        webhook_secret=secret,
        source=f"/retraining-autopilot/{site}",
    )


def notify_queue(env: Mapping[str, str] | None = None) -> str | None:
    """The events queue, if notifications are configured (read at import, to register its trigger)."""
    env = os.environ if env is None else env
    if not (env.get("NOTIFY_EVENTGRID_TOPIC") or "").strip() and not (env.get("NOTIFY_WEBHOOK_URL") or "").strip():
        return None
    queue = (env.get("NOTIFY_QUEUE") or "").strip() or "retraining-events"
    return queue if _QUEUE_RE.fullmatch(queue) else None


# Secrets the platform puts in the app's environment (App Service's managed-identity endpoint).
PLATFORM_SECRETS = ("IDENTITY_HEADER", "MSI_SECRET")


def hold_secrets(settings: Settings, env: Mapping[str, str]) -> None:
    """Register every secret these settings carry with the redactor, so it is removed by value from
    whatever the app records or logs (an error that echoes a key has no label to match)."""
    from shared.redact import hold

    account_key = None
    if settings.storage_connection:
        account_key = next(
            (p.split("=", 1)[1] for p in settings.storage_connection.split(";") if p.startswith("AccountKey=")), None
        )
    keys = [getattr(t, "api_key", None) for t in (*settings.targets, *(p.trainer for p in settings.pipelines))]
    if settings.notify is not None:
        keys += [settings.notify.webhook_secret, settings.notify.eventgrid_key]
    hold(settings.bes_api_key, account_key, settings.storage_connection, *keys, *(env.get(n) for n in PLATFORM_SECRETS))


def storage_identity(env: Mapping[str, str], extra: tuple[str, ...] = ()) -> StorageIdentity:
    """The identity-based form of ``AzureWebJobsStorage`` (as the Functions host reads it)."""
    prefix = "AzureWebJobsStorage__"
    name = (env.get(prefix + "accountName") or "").strip()
    uris = {kind: (env.get(f"{prefix}{kind}ServiceUri") or "").strip() for kind in ("blob", "queue", "table")}
    if name:
        uris = {kind: uris[kind] or f"https://{name}.{kind}.core.windows.net" for kind in uris}
    missing = [f"{prefix}{kind}ServiceUri" for kind, uri in uris.items() if not uri]
    if len(missing) == 3:
        raise SettingsError(
            "AzureWebJobsStorage",
            "is required: a connection string, or an identity-based connection (AzureWebJobsStorage__accountName)",
        )
    if missing:
        raise SettingsError(
            missing[0],
            "is required: this app uses blobs, queues and tables, so an identity-based "
            "connection needs all three service URIs (or __accountName)",
        )
    for kind, uri in uris.items():
        https_url(uri, f"{prefix}{kind}ServiceUri", "storage", extra)
    client_id = (env.get(prefix + "clientId") or "").strip() or None
    return StorageIdentity(uris["blob"].rstrip("/"), uris["queue"].rstrip("/"), uris["table"].rstrip("/"), client_id)


def named_entries(raw: str, setting: str, noun: str, name_re: re.Pattern, rule: str, *, required: bool = False):
    """The entries of a JSON list setting of named objects (``DEPLOY_TARGETS``, ``PIPELINES``): each
    as ``(name, entry)``, once its name is known to be valid and unique; the first problem, named."""
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(setting, f"is not valid JSON ({exc.msg})") from None
    if not isinstance(items, list) or (required and not items):
        raise SettingsError(setting, f"must be a {'non-empty ' if required else ''}JSON list of {noun}s")
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise SettingsError(setting, f"{noun} #{index + 1} is not an object")
        name = item.get("name")
        if not isinstance(name, str) or not name_re.fullmatch(name):
            raise SettingsError(setting, f"{noun} #{index + 1} needs a name of {rule}")
        if name in seen:
            raise SettingsError(setting, f"{noun} {name!r} is named twice")
        seen.add(name)
        yield name, item


def parse_targets(
    raw: str,
    env: Mapping[str, str],
    extra: tuple[str, ...] = (),
    *,
    for_reading: bool = False,
    approvals: dict[str, int] | None = None,
) -> tuple[Target, ...]:
    """Parse ``DEPLOY_TARGETS``: a JSON list of named targets, each parsed strictly by its kind's module.
    Every kind also takes ``approval`` (``auto`` or ``manual``) and ``approval_hours``, put in ``approvals``."""
    from shared import kinds

    name = "DEPLOY_TARGETS"
    context = ParseContext(env, extra, for_reading=for_reading)
    targets: list[Target] = []
    for target_name, item in named_entries(raw, name, "target", _TARGET_RE, "letters, digits, '-' or '_'"):
        where = f"target {target_name!r}"
        kind = item.get("kind")
        if kind not in kinds.TARGETS:
            raise SettingsError(name, f"{where} has unknown kind {kind!r} (expected one of {', '.join(kinds.TARGETS)})")
        fields = {k: v for k, v in item.items() if k not in ("name", "kind", "approval", "approval_hours")}
        approval, hours = item.get("approval", "auto"), item.get("approval_hours", 24)
        if approval not in ("auto", "manual"):
            raise SettingsError(name, f"{where} approval: must be 'auto' or 'manual'")
        if not isinstance(hours, int) or isinstance(hours, bool) or not 1 <= hours <= 720:
            raise SettingsError(name, f"{where} approval_hours: must be a whole number of hours from 1 to 720")
        if approval == "manual" and approvals is not None:
            approvals[target_name] = hours
        targets.append(kinds.target_module(kind).parse_config(target_name, fields, f"{name} {where}", context))
    return tuple(targets)


def parse_pipelines(raw: str, targets: tuple[Target, ...], context: ParseContext) -> tuple[Pipeline, ...]:
    """Parse ``PIPELINES``: a JSON list of pipelines, strictly; every problem names the pipeline and field."""
    from shared import kinds, preflight

    name = "PIPELINES"
    known = {t.name for t in targets}
    pipelines: list[Pipeline] = []
    rule = "1-40 lowercase letters, digits and hyphens"
    for pipeline_name, item in named_entries(raw, name, "pipeline", _PIPELINES_NAME_RE, rule, required=True):
        what = f"{name} pipeline {pipeline_name!r}"
        allowed = {"name", "blob_prefix", "trainer", "targets", "gate", "schedule", "preflight"}
        check_fields(item, what, allowed, {"name", "trainer"})
        prefix = context.text(item, "blob_prefix", what, "")
        if len(prefix) > 512 or _PREFIX_BAD.search(prefix):
            raise fail(
                f"{what} blob_prefix",
                f"{prefix!r} is not a blob name prefix (no leading '/', '.' segments, control characters)",
            )
        clash = next((p.name for p in pipelines if p.blob_prefix == prefix), None)
        if clash:
            raise fail(f"{what} blob_prefix", f"{prefix!r} is also pipeline {clash!r}'s: an upload must have one owner")
        trainer = item.get("trainer")
        if not isinstance(trainer, dict) or trainer.get("kind") not in kinds.TRAINERS:
            raise fail(f"{what} trainer", f"must be an object whose kind is one of {', '.join(kinds.TRAINERS)}")
        module = kinds.trainer_module(trainer["kind"])
        config = module.parse_config({k: v for k, v in trainer.items() if k != "kind"}, f"{what} trainer", context)
        owned = item.get("targets", [])
        if not isinstance(owned, list) or not all(isinstance(t, str) for t in owned) or len(set(owned)) != len(owned):
            raise fail(f"{what} targets", "must be a list of distinct target names")
        for target in owned:
            if target not in known:
                raise fail(f"{what} targets", f"{target!r} is not a target of DEPLOY_TARGETS")
            owner = next((p.name for p in pipelines if target in p.targets), None)
            if owner:
                raise fail(f"{what} targets", f"{target!r} is pipeline {owner!r}'s already: a target serves one model")
        gate = _gate(item.get("gate"), f"{what} gate", context.defaults["gate"])
        schedule = item.get("schedule")
        if schedule is not None:
            if not isinstance(schedule, str):
                raise fail(f"{what} schedule", "must be an NCRONTAB string")
            schedule = ncrontab(f"{what} schedule", schedule)
        rules = preflight.parse_rules(item.get("preflight"), f"{what} preflight")
        pipelines.append(
            check_served(
                Pipeline(pipeline_name, prefix, config, tuple(owned), gate, schedule, rules), targets, f"{what} targets"
            )
        )
    return tuple(pipelines)


def check_served(pipeline: Pipeline, targets: tuple[Target, ...], what: str) -> Pipeline:
    """``pipeline``, once each of its targets' kinds accepts its trainer (a kind that serves only some
    trainers' models has ``check_pipeline``)."""
    from shared import kinds

    for target in targets:
        check = getattr(kinds.target_module(target.kind), "check_pipeline", None)
        if target.name in pipeline.targets and check is not None:
            check(target, pipeline, what)
    return pipeline


def _gate(raw: object, what: str, default: Gate) -> Gate:
    if raw is None:
        return default
    if not isinstance(raw, dict):
        raise fail(what, "must be an object with metric, min, min_improvement")
    check_fields(raw, what, {"metric", "min", "min_improvement"}, set())
    metric = raw.get("metric", default.metric)
    if not isinstance(metric, str) or not metric.strip():
        raise fail(f"{what} metric", "must be the name of an evaluation column")
    numbers = {}
    for key in ("min", "min_improvement"):
        value = raw.get(key, getattr(default, key))
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise fail(f"{what} {key}", f"must be a number, not {type(value).__name__}")
        numbers[key] = None if value is None else float(value)
    return Gate(metric.strip(), numbers["min"], numbers["min_improvement"] or 0.0)


def https_url(raw: str, what: str, kind: str, extra: tuple[str, ...] = ()) -> str:
    """``raw`` if it is an https URL (http only on loopback) whose host may receive ``kind`` credentials
    (``shared/hosts.py``); the error names the setting, ``what``'s first word."""
    from shared import hosts

    setting = what.split()[0]
    where = "" if what == setting else f"{what}: "
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(setting, f"{where}{raw!r} is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise SettingsError(setting, f"{where}the URL must not carry credentials")
    try:
        host = hosts.check(parts.hostname, kind, extra)
    except hosts.HostRefused as exc:
        raise SettingsError(setting, f"{where}{exc}") from None
    if parts.scheme == "http" and not hosts.is_loopback(host):
        raise SettingsError(setting, f"{where}must use https (plain http only for a local emulator)")
    return raw


def jobs_url(raw: str, name: str = "BES_JOBS_URL", extra: tuple[str, ...] = ()) -> str:
    """Normalise a BES ``.../jobs`` URL (ADF accepts it with or without ``?api-version=2.0``).

    Only a classic runtime host (or loopback: the local emulator) gets the API key, over https.
    ``name`` is the setting (and where in it) that the errors name.
    """
    parts = urlsplit(https_url(raw, name, "bes", extra))
    path = parts.path.rstrip("/")
    if not path.endswith("/jobs"):
        raise fail(name, "must be the training web service's .../jobs URL")
    if parts.query and parts.query != "api-version=2.0":
        raise fail(name, f"unexpected query {parts.query!r} (only api-version=2.0 is allowed)")
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


_NCRONTAB_FIELD = re.compile(r"^[0-9A-Za-z*/,\-]+$")


def ncrontab(name: str, value: str) -> str:
    """Check an NCRONTAB expression's shape: six fields, seconds first (the host parses the rest)."""
    fields = value.split()
    if len(fields) != 6 or not all(_NCRONTAB_FIELD.fullmatch(f) for f in fields):
        raise fail(
            name, f"{value!r} is not an NCRONTAB expression with six fields (seconds first, e.g. '0 */5 * * * *')"
        )
    return " ".join(fields)


def retrain_schedule(env: Mapping[str, str] | None = None, *, strict: bool = False) -> str | None:
    """``RETRAIN_SCHEDULE``, or ``None`` when timer-based retraining is off (the default).

    Read at indexing time too: the timer function exists only when a schedule is set, since a timer
    binding needs a schedule and "off" has no NCRONTAB spelling.
    """
    env = os.environ if env is None else env
    value = (env.get("RETRAIN_SCHEDULE") or "").strip()
    if not value or value.lower() in ("off", "none", "false"):
        return None
    try:
        return ncrontab("RETRAIN_SCHEDULE", value)
    except SettingsError:
        if strict:
            raise
        return None


def schedules(env: Mapping[str, str] | None = None) -> list[tuple[str, str | None, str]]:
    """The retraining timers to register: ``(function name, pipeline, NCRONTAB)`` — ``retrain_on_schedule``
    for the flat ``RETRAIN_SCHEDULE``, ``retrain_on_schedule_<pipeline>`` for each pipeline with a
    ``schedule``. Read at indexing time, leniently: a bad value is reported by the first invocation's
    validation, never by an import error (the host would index no function at all)."""
    env = os.environ if env is None else env
    raw = (env.get("PIPELINES") or "").strip()
    if not raw:
        flat = retrain_schedule(env)
        return [("retrain_on_schedule", None, flat)] if flat else []
    try:
        items = json.loads(raw)
    except ValueError:
        return []
    found = []
    for item in items if isinstance(items, list) else []:
        name, schedule = (item.get("name"), item.get("schedule")) if isinstance(item, dict) else (None, None)
        if isinstance(name, str) and _PIPELINES_NAME_RE.fullmatch(name) and isinstance(schedule, str):
            try:
                found.append((f"retrain_on_schedule_{name.replace('-', '_')}", name, ncrontab("PIPELINES", schedule)))
            except SettingsError:
                continue
    return found


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
