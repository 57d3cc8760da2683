"""Azure ML (v2) managed online endpoints as a deploy target: kind ``azureml-online``.

A new model never replaces the live one in place: it gets a deployment of its own beside the live one,
is probed straight (``azureml-model-deployment``), shadowed, given a canary share, then all traffic —
one stage per poll tick (``shared/rollout.py``). This module is the wire: the target's configuration,
the calls (GET → change → PUT of the whole endpoint, never PATCH; deployment PUT/DELETE; both LROs
followed by their operation URL across ticks), the scoring credential of the endpoint's auth mode, and
the pure body builders. Protocol: §5 and §6 of ``../shared/reference/azure-ml-v2-protocol.md``.
"""

from __future__ import annotations

import copy
import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shared.azureml import API_VERSION, ML_SCOPE, WORKSPACE_ID, AzureMLClient, AzureMLError
from shared.http import bearer_token, ci_get, read_json, text_field
from shared.redact import hold, shown

ENDPOINT_ID = re.compile(
    WORKSPACE_ID.pattern + r"/onlineEndpoints/[a-zA-Z][-a-zA-Z0-9]{1,30}[a-zA-Z0-9]", re.IGNORECASE
)
DEPLOYMENT_NAME = re.compile(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?")  # 3-32 characters, as azure-ai-ml checks
READ_ONLY = {"provisioningstate", "scoringuri", "swaggeruri"}
TRACKED = ("location", "kind", "sku", "tags")  # a PUT keeps these besides properties and identity
DEFAULT_INSTANCE = "Standard_F4s_v2"  # the spec's default instanceType, for a first deployment
ENDPOINT_SHAPE = {
    "type": "object",
    "required": ["properties"],
    "properties": {
        "properties": {
            "type": "object",
            "required": ["authmode"],
            "properties": {
                "authmode": {"type": "string"},
                "traffic": {"type": ["object", "null"], "additionalProperties": {"type": "integer"}},
                "mirrortraffic": {"type": ["object", "null"], "additionalProperties": {"type": "integer"}},
                "scoringuri": {"type": ["string", "null"]},
            },
        }
    },
}
DEPLOYMENT_SHAPE = {
    "type": "object",
    "required": ["name", "properties"],
    "properties": {
        "name": {"type": "string"},
        "properties": {
            "type": "object",
            "properties": {"model": {"type": ["string", "null"]}, "provisioningstate": {"type": ["string", "null"]}},
        },
    },
}
LIST_SHAPE = {"type": "object", "properties": {"value": {"type": "array", "items": DEPLOYMENT_SHAPE}}}
OPERATION_SHAPE = {"type": "object", "properties": {"status": {"type": ["string", "null"]}}}
KEYS_SHAPE = {"type": "object", "required": ["primarykey"], "properties": {"primarykey": {"type": "string"}}}
TOKEN_SHAPE = {"type": "object", "required": ["accesstoken"], "properties": {"accesstoken": {"type": "string"}}}
CREDENTIAL_SECONDS = 600.0
TERMINAL = {"succeeded": "Succeeded", "failed": "Failed", "canceled": "Canceled", "cancelled": "Canceled"}


@dataclass(frozen=True)
class Rollout:
    """How a new model reaches all traffic: a mirrored share, a canary share baked, then everything."""

    mirror_percent: int = 0
    mirror_minutes: float = 0.0
    canary_percent: int = 10
    bake_minutes: float = 10.0
    probe_rows: int = 20
    max_probe_error_rate: float = 0.0


@dataclass(frozen=True)
class OnlineTarget:
    """A managed online endpoint; each model gets its own deployment on it."""

    name: str
    endpoint: str
    rollout: Rollout = field(default_factory=Rollout)
    keep_deployments: int = 2
    management_url: str = "https://management.azure.com"
    api_version: str = "2025-12-01"
    kind: str = "azureml-online"
    staged = True  # deployed in stages over poll ticks (shared/rollout.py), not in one call

    @property
    def address(self) -> str:
        return self.endpoint

    @property
    def workspace(self) -> str:
        return self.endpoint[: self.endpoint.lower().index("/onlineendpoints/")]


_ROLLOUT_LIMITS = {  # field: (type, low, high)
    "mirror_percent": (int, 0, 50),
    "mirror_minutes": (float, 0, 1440),
    "canary_percent": (int, 0, 99),
    "bake_minutes": (float, 0, 1440),
    "probe_rows": (int, 0, 1000),
    "max_probe_error_rate": (float, 0, 1),
}


def parse_config(name: str, fields: dict, what: str, ctx) -> OnlineTarget:
    """A ``DEPLOY_TARGETS`` entry of kind ``azureml-online``: exact fields, each problem naming its field."""
    from shared.settings import check_fields, fail

    check_fields(
        fields, what, {"endpoint", "rollout", "keep_deployments", "management_url", "api_version"}, {"endpoint"}
    )
    endpoint = ctx.text(fields, "endpoint", what)
    if not ENDPOINT_ID.fullmatch(endpoint):
        raise fail(
            f"{what} endpoint",
            "must be an online endpoint's ARM id (/subscriptions/.../workspaces/<ws>/onlineEndpoints/<name>)",
        )
    raw = fields.get("rollout", {})
    if not isinstance(raw, dict):
        raise fail(f"{what} rollout", "must be an object")
    check_fields(raw, f"{what} rollout", set(_ROLLOUT_LIMITS), set())
    values = {}
    for key, (kind, low, high) in _ROLLOUT_LIMITS.items():
        if key not in raw:
            continue
        value = raw[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)) or not low <= value <= high:
            whole = "a whole number" if kind is int else "a number"
            raise fail(f"{what} rollout {key}", f"must be {whole} from {low} to {high}, not {shown(str(value))}")
        values[key] = kind(value)
    keep = fields.get("keep_deployments", 2)
    if isinstance(keep, bool) or not isinstance(keep, int) or not 2 <= keep <= 20:
        raise fail(
            f"{what} keep_deployments",
            "must be a whole number from 2 to 20 (the live deployment and the one a rollback returns to)",
        )
    version = ctx.text(fields, "api_version", what, "2025-12-01")
    if not API_VERSION.fullmatch(version):
        raise fail(f"{what} api_version", f"{shown(version)!r} is not an api-version (YYYY-MM-DD)")
    management = ctx.url(fields.get("management_url", "https://management.azure.com"), f"{what} management_url", "arm")
    return OnlineTarget(name, endpoint.rstrip("/"), Rollout(**values), keep, management.rstrip("/"), version)


def check_pipeline(target: OnlineTarget, pipeline, what: str) -> None:
    """The model a v2 target serves must be registered by a v2 pipeline in the endpoint's workspace."""
    from shared.settings import fail

    trainer = pipeline.trainer
    if getattr(trainer, "kind", None) != "azureml":
        raise fail(what, f"{target.name!r} is an azureml-online target: it serves models an azureml trainer registers")
    if trainer.workspace.lower() != target.workspace.lower():
        raise fail(
            what, f"{target.name!r} is in workspace {target.workspace}, the trainer registers in {trainer.workspace}"
        )


def deployment_name(run_id: str) -> str:
    """A name derived from the run (a retried create is the same deployment), valid for the service:
    ``ap-`` + the run's first 15 letters and digits + a hash of the whole id."""
    head = re.sub(r"[^a-z0-9]", "", run_id.lower())[:15]
    return f"ap-{head}-{hashlib.sha256(run_id.encode()).hexdigest()[:10]}"


# --- pure body builders ----------------------------------------------------------------------------


def weights(mapping: Any) -> dict[str, int]:
    """A traffic or mirror map without its zero entries (as azure-ai-ml strips them)."""
    return {str(k): int(v) for k, v in (mapping or {}).items() if isinstance(v, int) and v > 0}


def _identity(identity: Any) -> dict | None:
    """What a PUT may send back of a read identity: its type and the user-assigned ids (read-only ids dropped)."""
    if not isinstance(identity, dict) or ci_get(identity, "type") is None:
        return None
    kept: dict[str, Any] = {"type": ci_get(identity, "type")}
    assigned = ci_get(identity, "userAssignedIdentities")
    if isinstance(assigned, dict) and assigned:
        kept["userAssignedIdentities"] = {key: {} for key in assigned}
    return kept


def endpoint_body(resource: dict, traffic: dict[str, int], mirror: dict[str, int]) -> dict:
    """The whole endpoint as read, with only ``traffic`` and ``mirrorTraffic`` changed (read-only
    fields dropped); every other property — the auth mode, a description — goes back as it came."""
    body: dict[str, Any] = {k: copy.deepcopy(v) for k, v in resource.items() if k.lower() in TRACKED}
    identity = _identity(ci_get(resource, "identity"))
    if identity:
        body["identity"] = identity
    properties = {k: copy.deepcopy(v) for k, v in (ci_get(resource, "properties") or {}).items()}
    properties = {k: v for k, v in properties.items() if k.lower() not in READ_ONLY | {"traffic", "mirrortraffic"}}
    body["properties"] = {**properties, "traffic": dict(traffic), "mirrorTraffic": dict(mirror)}
    return body


def deployment_body(template: dict | None, model_id: str, location: str) -> dict:
    """A new deployment: the live one's settings (``template``) with ``properties.model`` set, or —
    for a first deployment — a managed one of one instance of the spec's default type."""
    if template is None:
        return {
            "location": location,
            "sku": {"name": "Default", "capacity": 1},
            "properties": {"endpointComputeType": "Managed", "model": model_id, "instanceType": DEFAULT_INSTANCE},
        }
    body: dict[str, Any] = {k: copy.deepcopy(v) for k, v in template.items() if k.lower() in TRACKED}
    identity = _identity(ci_get(template, "identity"))
    if identity:
        body["identity"] = identity
    properties = {k: copy.deepcopy(v) for k, v in (ci_get(template, "properties") or {}).items()}
    properties = {k: v for k, v in properties.items() if k.lower() not in ("provisioningstate", "model")}
    body["properties"] = {**properties, "model": model_id}
    body.setdefault("location", location)
    return body


# --- the calls -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """A long-running operation to follow on later ticks: ``async`` (an Azure-AsyncOperation status
    document), ``location`` (202 until done) or ``resource`` (watch provisioningState)."""

    url: str | None
    kind: str
    timeout: str | None = None  # x-ms-async-operation-timeout, ISO-8601

    def record(self) -> dict:
        return {"url": self.url, "kind": self.kind, "timeout": self.timeout}


class OnlineDeployer:
    """One online endpoint's calls, through the shared Azure ML HTTP plumbing (host checks, tokens)."""

    def __init__(self, target: OnlineTarget, client: AzureMLClient, credential) -> None:
        self.target, self.client, self._credential = target, client, credential
        self._scoring: tuple[str, str, float] | None = None  # (auth mode, credential, until)
        self._path = self.target.endpoint[len(self.target.workspace) :]

    def endpoint(self) -> dict:
        return read_json(self.client.arm("endpoint", "GET", self._path), AzureMLError, "endpoint", ENDPOINT_SHAPE)

    def deployment(self, name: str) -> dict | None:
        try:
            response = self.client.arm("deployment", "GET", f"{self._path}/deployments/{name}")
        except AzureMLError as exc:
            if exc.http_status == 404:
                return None
            raise
        return read_json(response, AzureMLError, "deployment", DEPLOYMENT_SHAPE)

    def deployments(self) -> list[dict]:
        """Every deployment on the endpoint (following ``nextLink``, on the management host only)."""
        found: list[dict] = []
        page = read_json(
            self.client.arm("deployments", "GET", f"{self._path}/deployments"), AzureMLError, "deployments", LIST_SHAPE
        )
        for _ in range(50):
            found.extend(page.get("value") or [])
            link = page.get("nextLink")
            if not link:
                break
            page = read_json(self.client.call("deployments", "GET", link), AzureMLError, "deployments", LIST_SHAPE)
        return found

    def put_deployment(self, name: str, body: dict) -> Operation:
        return _operation(self.client.arm("create", "PUT", f"{self._path}/deployments/{name}", body))

    def put_endpoint(self, body: dict, operation: str) -> Operation:
        return _operation(self.client.arm(operation, "PUT", self._path, body))

    def delete_deployment(self, name: str) -> None:
        try:
            self.client.arm("retire", "DELETE", f"{self._path}/deployments/{name}")
        except AzureMLError as exc:
            if exc.http_status != 404:  # gone already is what we wanted
                raise

    def operation(self, op: dict, resource: str | None = None) -> tuple[str, str | None]:
        """Where a recorded operation is: ``InProgress``, ``Succeeded``, ``Failed`` or ``Canceled``, and
        a failure's message. Only the management host is ever polled with our token."""
        url = op.get("url")
        if url and urlsplit(url).hostname != urlsplit(self.target.management_url).hostname:
            raise AzureMLError(
                f"refusing to follow an operation URL on {urlsplit(url).hostname}",
                operation="operation",
                code="UntrustedOperationUrl",
            )
        if op.get("kind") == "async" and url:
            body = read_json(self.client.call("operation", "GET", url), AzureMLError, "operation", OPERATION_SHAPE)
            status = TERMINAL.get(str(ci_get(body, "status")).lower(), "InProgress")
            error = ci_get(body, "error")
            return status, text_field(ci_get(error, "message")) if status != "Succeeded" else None
        if op.get("kind") == "location" and url:
            response = self.client.call("operation", "GET", url)
            return ("InProgress", None) if response.status_code == 202 else ("Succeeded", None)
        return "Succeeded", None  # no URL: the caller reads the resource's provisioningState

    def scoring_credential(self, auth_mode: str) -> str:
        """The credential of the endpoint's auth mode, held by the redactor and kept for
        ``CREDENTIAL_SECONDS`` (each probing tick would otherwise fetch it again): a key (``listKeys``),
        an AML token (``token``) or an ``https://ml.azure.com`` token (``AADToken``, cached by azure-identity)."""
        mode = str(auth_mode).lower()
        if mode == "aadtoken":
            return bearer_token(self._credential, ML_SCOPE, AzureMLError)
        kept = self._scoring
        if kept is not None and kept[0] == mode and time.monotonic() < kept[2]:
            return kept[1]
        if mode == "key":
            keys = read_json(
                self.client.arm("keys", "POST", f"{self._path}/listKeys"), AzureMLError, "keys", KEYS_SHAPE
            )
            secret = ci_get(keys, "primaryKey")
            hold(secret)
        elif mode == "amltoken":
            token = read_json(
                self.client.arm("token", "POST", f"{self._path}/token"), AzureMLError, "token", TOKEN_SHAPE
            )
            secret = ci_get(token, "accessToken")
            hold(secret, ephemeral=True)  # expires: held while it may still be seen
        else:
            raise AzureMLError(
                f"unknown authMode {shown(str(auth_mode)[:40])!r}", operation="probe", code="UnexpectedResponse"
            )
        self._scoring = (mode, secret, time.monotonic() + CREDENTIAL_SECONDS)
        return secret

    def forget_credential(self) -> None:
        """After a 401 from scoring: the key was rotated or the token expired; fetch it again next time."""
        self._scoring = None

    def score(self, scoring_uri: str, credential: str, deployment: str, columns: list[str], row: list) -> str | None:
        """Score one row straight at ``deployment``; ``None`` if it answered a prediction, else why not."""
        body = {"input_data": {"columns": columns, "index": [0], "data": [row]}}
        try:
            response = self.client.call(
                "probe",
                "POST",
                scoring_uri,
                kind="azureml_inference",
                body=body,
                token=credential,
                headers={"azureml-model-deployment": deployment},
            )
        except AzureMLError as exc:
            if exc.http_status == 401:
                self.forget_credential()
            return str(exc)[:300]
        try:
            answer = response.json()
        except ValueError:
            return "the answer is not JSON"
        predictions = ci_get(answer, "predictions") if isinstance(answer, dict) else answer
        if not isinstance(predictions, list) or len(predictions) != 1:
            return f"the answer is not one prediction: {shown(str(answer)[:80])}"
        return None

    def probe(self) -> str:
        endpoint = self.endpoint()
        properties = ci_get(endpoint, "properties")
        traffic = weights(ci_get(properties, "traffic"))
        return (
            f"endpoint reachable, token accepted; authMode {ci_get(properties, 'authMode')}, "
            f"traffic {traffic or 'none'}, {len(self.deployments())} deployment(s)"
        )

    def preview(self, model_id: str) -> tuple[str, dict]:
        endpoint = self.endpoint()
        traffic = weights(ci_get(ci_get(endpoint, "properties"), "traffic"))
        live = max(traffic, key=traffic.get) if traffic else None
        template = self.deployment(live) if live else None
        body = deployment_body(template, model_id, str(ci_get(endpoint, "location") or ""))
        return f"PUT {self.target.endpoint}/deployments/<ap-run> (copying {live or 'defaults'})", body


def _operation(response) -> Operation:
    """The operation a PUT started: the ``Azure-AsyncOperation`` header, else the body's
    ``properties.properties.AzureAsyncOperationUri`` (as Microsoft's REST sample reads it)."""
    timeout = response.headers.get("x-ms-async-operation-timeout")
    url = response.headers.get("Azure-AsyncOperation")
    if not url:
        try:
            body = response.json()
        except ValueError:
            body = None
        url = text_field(ci_get(ci_get(ci_get(body, "properties"), "properties"), "AzureAsyncOperationUri"))
    if url:
        return Operation(url, "async", timeout)
    location = response.headers.get("Location")
    if response.status_code == 202 and location:
        return Operation(location, "location", timeout)
    return Operation(None, "resource", timeout)


def build(target: OnlineTarget, svc) -> OnlineDeployer:
    s = svc.settings
    credential = svc.azure_credential()
    client = AzureMLClient(
        target, credential, svc.session(), timeout=s.http_timeout_seconds, extra_hosts=s.extra_allowed_hosts
    )
    return OnlineDeployer(target, client, credential)
