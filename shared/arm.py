"""Client for New (ARM) web services: ``Microsoft.MachineLearning/webServices``.

Retraining rewrites the trained-model asset of the definition: GET the service, set the asset's
``locationInfo.uri``, PATCH ``{"properties": {packageType, assets}}`` — as ``Update-AzMlWebService
-ServiceUpdates`` does — and follow the ``Azure-AsyncOperation`` long-running operation to a terminal
``status``. Keys are matched case-insensitively (the public examples mix ``AssetId``/``assetId``) and
every key we do not change is sent back as it came. Tokens come from ``azure-identity``.
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from shared import hosts
from shared.http import ServiceError, bearer_token, ci_get, make_session, read_json, send, text_field
from shared.redact import shown

SCOPE = "https://management.azure.com/.default"
API_VERSIONS = ("2017-01-01", "2016-05-01-preview")
_RESOURCE_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.MachineLearning/webServices/[^/]+", re.IGNORECASE
)


@dataclass(frozen=True)
class ArmTarget:
    """A New (ARM) web service, updated by rewriting its trained-model asset in the definition."""

    name: str
    resource_id: str
    asset_name: str | None = None
    management_url: str = "https://management.azure.com"
    api_version: str = "2017-01-01"
    kind: str = "arm"

    @property
    def address(self) -> str:
        return self.resource_id


def parse_config(name: str, fields: dict, what: str, ctx) -> ArmTarget:
    """A ``DEPLOY_TARGETS`` entry of kind ``arm``: ``resource_id``, and optionally ``asset_name``,
    ``management_url`` (default the public cloud's) and ``api_version``."""
    from shared.settings import check_fields, fail

    check_fields(fields, what, {"resource_id", "asset_name", "management_url", "api_version"}, {"resource_id"})
    resource_id = ctx.text(fields, "resource_id", what)
    if not _RESOURCE_ID.fullmatch(resource_id):
        raise fail(
            what,
            "resource_id must be /subscriptions/<id>/resourceGroups/<rg>/"
            "providers/Microsoft.MachineLearning/webServices/<name>",
        )
    version = ctx.text(fields, "api_version", what, "2017-01-01")
    if version not in API_VERSIONS:
        raise fail(what, f"api_version must be one of {', '.join(API_VERSIONS)}")
    management = ctx.url(fields.get("management_url", "https://management.azure.com"), f"{what} management_url", "arm")
    return ArmTarget(name, resource_id, ctx.text(fields, "asset_name", what), management.rstrip("/"), version)


TERMINAL = {"succeeded": "Succeeded", "failed": "Failed", "canceled": "Canceled", "cancelled": "Canceled"}


class ArmError(ServiceError):
    service = "ARM"


_SECONDS = re.compile(r"[0-9]{1,4}")  # a Retry-After in seconds (ASCII digits: "²".isdigit() is true)
_ASSET = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "type": {"type": "string"},
        "locationinfo": {"type": ["object", "null"], "properties": {"uri": {"type": ["string", "null"]}}},
    },
}
# What we read of a definition (keys lower-cased): properties.assets, an object of assets.
DEFINITION_SHAPE = {
    "type": "object",
    "required": ["properties"],
    "properties": {
        "properties": {
            "type": "object",
            "properties": {
                "packagetype": {"type": ["string", "null"]},
                "assets": {"type": ["object", "null"], "additionalProperties": _ASSET},
            },
        }
    },
}
# An Azure-AsyncOperation status body: an object whose status (or provisioningState) is a string.
OPERATION_SHAPE = {
    "type": "object",
    "properties": {
        "status": {"type": ["string", "null"]},
        "provisioningstate": {"type": ["string", "null"]},
        "error": {"type": ["object", "null"]},
    },
}


def ci_key(mapping: dict, key: str) -> str:
    """The key as ``mapping`` spells it, or ``key`` if absent."""
    return next((k for k in mapping if isinstance(k, str) and k.lower() == key.lower()), key)


def find_asset(definition: dict, asset_name: str | None) -> str:
    """The key of the trained-model asset: the one named ``asset_name``, else the only ``Resource``."""
    assets = ci_get(ci_get(definition, "properties"), "assets") or {}
    if asset_name is not None:
        matches = [k for k, a in assets.items() if ci_get(a, "name") == asset_name]
        if len(matches) != 1:
            names = ", ".join(str(ci_get(a, "name")) for a in assets.values())
            raise ArmError(
                f"the definition has no single asset named {asset_name!r} (assets: {names})",
                operation="update",
                code="AssetNotFound",
            )
        kind = str(ci_get(assets[matches[0]], "type"))
        if kind.lower() != "resource":  # a Module holds code, not the trained model: the update would change nothing
            raise ArmError(
                f"asset {asset_name!r} is a {shown(kind[:40])}, not a trained model ('Resource'); "
                "asset_name must name the trained-model asset",
                operation="update",
                code="AssetNotTrainedModel",
            )
        return matches[0]
    resources = [k for k, a in assets.items() if str(ci_get(a, "type")).lower() == "resource"]
    if len(resources) != 1:
        raise ArmError(
            f"expected exactly one 'Resource' asset, found {len(resources)}; set asset_name",
            operation="update",
            code="AssetNotFound",
        )
    return resources[0]


def asset_uri(definition: dict, asset_key: str) -> str | None:
    asset = (ci_get(ci_get(definition, "properties"), "assets") or {}).get(asset_key)
    return ci_get(ci_get(asset, "locationInfo"), "uri")


def with_asset_uri(definition: dict, asset_key: str, uri: str) -> dict:
    """The PATCH body: packageType and all assets as read, the one asset's ``locationInfo.uri`` replaced."""
    properties = ci_get(definition, "properties") or {}
    assets = copy.deepcopy(ci_get(properties, "assets") or {})
    asset = assets[asset_key]
    location = asset.setdefault(ci_key(asset, "locationInfo"), {})
    location[ci_key(location, "uri")] = uri
    return {
        "properties": {
            ci_key(properties, "packageType"): ci_get(properties, "packageType") or "Graph",
            ci_key(properties, "assets"): assets,
        }
    }


class ArmWebServiceClient:
    def __init__(
        self,
        management_url: str,
        credential: Any,
        *,
        api_version: str = "2017-01-01",
        timeout: float = 30.0,
        poll_seconds: float = 5.0,
        operation_timeout: float = 600.0,
        session: requests.Session | None = None,
    ) -> None:
        self.management_url = management_url.rstrip("/")
        self._credential = credential
        self.api_version = api_version
        self._timeout = (min(10.0, timeout), timeout)
        self._poll_seconds = poll_seconds
        self._operation_timeout = operation_timeout
        self._session = session or make_session()

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {bearer_token(self._credential, SCOPE, ArmError)}",
            "Accept": "application/json",
            "Content-Type": "application/json; charset=utf-8",
        }

    def _call(self, operation: str, method: str, url: str, body: Any = None, params: dict | None = None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        return send(
            self._session,
            ArmError,
            operation,
            method,
            url,
            headers=self._headers(),
            timeout=self._timeout,
            params=params,
            body=data,
        )

    def get(self, resource_id: str) -> dict:
        """The web service's definition (its shape checked)."""
        response = self._call("get", "GET", self.management_url + resource_id, params={"api-version": self.api_version})
        return read_json(response, ArmError, "get", DEFINITION_SHAPE)

    def patch(self, resource_id: str, body: dict) -> None:
        """PATCH the definition and wait for its long-running operation; a ``Failed`` status raises."""
        response = self._call(
            "update", "PATCH", self.management_url + resource_id, body, params={"api-version": self.api_version}
        )
        operation = response.headers.get("Azure-AsyncOperation")
        if operation:
            self._wait(operation)

    def _wait(self, url: str) -> None:
        host = urlsplit(url).hostname
        if not hosts.same_service(host, urlsplit(self.management_url).hostname or ""):
            # Our bearer token goes to whatever URL we poll: only ever to the management endpoint.
            raise ArmError(
                f"refusing to follow an operation URL on {host}", operation="update", code="UntrustedOperationUrl"
            )
        deadline = time.monotonic() + self._operation_timeout
        while True:
            response = self._call("operation", "GET", url)
            body = read_json(response, ArmError, "operation", OPERATION_SHAPE)
            status = TERMINAL.get(str(ci_get(body, "status") or ci_get(body, "provisioningState")).lower())
            if status == "Succeeded":
                return
            if status in ("Failed", "Canceled"):
                error = (
                    ci_get(body, "error")
                    or ci_get(body, "errorInfo")
                    or ci_get(ci_get(body, "properties"), "error")
                    or {}
                )
                raise ArmError(
                    text_field(ci_get(error, "message")) or f"the update operation ended {status}",
                    operation="update",
                    code=text_field(ci_get(error, "code")) or f"Operation{status}",
                )
            if time.monotonic() >= deadline:
                raise ArmError(
                    f"the update operation did not finish in {self._operation_timeout:.0f}s",
                    operation="update",
                    code="OperationTimeout",
                    transient=True,
                )
            retry_after = (response.headers.get("Retry-After") or "").strip()
            time.sleep(min(float(retry_after), 60.0) if _SECONDS.fullmatch(retry_after) else self._poll_seconds)


class ArmDeployer:
    """An ARM web service reads the model through its own storage account, so its asset gets the plain
    blob URL (the public recipe); the model must live in that account."""

    def __init__(self, target: ArmTarget, storage, client: ArmWebServiceClient) -> None:
        self.target, self.storage, self.client = target, storage, client

    def _update(self, definition: dict, model_path: str) -> tuple[str, dict]:
        container, blob = model_path.split("/", 1)
        key = find_asset(definition, self.target.asset_name)
        return key, with_asset_uri(definition, key, self.storage.blob_url(container, blob))

    def put(self, model_path: str) -> None:
        _, body = self._update(self.client.get(self.target.resource_id), model_path)
        self.client.patch(self.target.resource_id, body)

    def live(self) -> str | None:
        definition = self.client.get(self.target.resource_id)
        uri = asset_uri(definition, find_asset(definition, self.target.asset_name)) or ""
        plain = uri.split("?", 1)[0]
        base = self.storage.blob_base_location
        return unquote(plain[len(base) :]) if plain.startswith(base) else uri

    def probe(self) -> str:
        definition = self.client.get(self.target.resource_id)
        key = find_asset(definition, self.target.asset_name)
        return f"web service reachable, token accepted; asset {key!r} now at {asset_uri(definition, key)}"

    def preview(self, model_path: str) -> tuple[str, dict]:
        key, body = self._update(self.client.get(self.target.resource_id), model_path)
        properties = body["properties"]
        visible = {k: ({key: v[key]} if isinstance(v, dict) and key in v else v) for k, v in properties.items()}
        return f"PATCH {self.target.resource_id} (of all assets, only {key} shown)", {"properties": visible}


def build(target: ArmTarget, svc) -> ArmDeployer:
    s = svc.settings
    client = ArmWebServiceClient(
        target.management_url,
        svc.azure_credential(),
        api_version=target.api_version,
        timeout=s.http_timeout_seconds,
        poll_seconds=s.arm_poll_seconds,
        operation_timeout=s.arm_timeout_seconds,
        session=svc.session(),
    )
    return ArmDeployer(target, svc.storage, client)
