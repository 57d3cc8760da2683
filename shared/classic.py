"""Client for one classic web-service endpoint's management API: read it, and PATCH its trained model.

``PATCH {mgmt}/workspaces/{ws}/webservices/{id}/endpoints/{name}`` with
``{"Resources": [{"Name": <resource>, "Location": {BaseLocation, RelativeLocation, SasBlobToken}}]}``.
No ``api-version`` (no public client sends one). Response bodies are not relied on: success is
verified by reading the endpoint back.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from shared.http import ServiceError, ci_get, make_session, read_json, send

_ENDPOINT_PATH = re.compile(r"/workspaces/[^/]+/webservices/[^/]+/endpoints/[^/]+", re.IGNORECASE)


@dataclass(frozen=True)
class ClassicTarget:
    """A classic web service's (non-default) endpoint, updated by PATCHing its trained-model resource."""

    name: str
    endpoint_url: str
    api_key: str = field(repr=False)
    resource_name: str
    kind: str = "classic"

    @property
    def address(self) -> str:
        return self.endpoint_url


def parse_config(name: str, fields: dict, what: str, ctx) -> ClassicTarget:
    """A ``DEPLOY_TARGETS`` entry of kind ``classic``: ``endpoint_url``, ``resource_name``, and the key
    inline (``api_key``) or, better, by naming another app setting (``api_key_setting``)."""
    from shared.settings import check_fields, fail

    check_fields(
        fields, what, {"endpoint_url", "api_key", "api_key_setting", "resource_name"}, {"endpoint_url", "resource_name"}
    )
    url = ctx.url(fields["endpoint_url"], f"{what} endpoint_url", "classic")
    if not _ENDPOINT_PATH.fullmatch(urlsplit(url).path):
        raise fail(what, "endpoint_url must be .../workspaces/<ws>/webservices/<id>/endpoints/<endpoint name>")
    return ClassicTarget(name, url, ctx.secret(fields, what), ctx.text(fields, "resource_name", what))


class ClassicError(ServiceError):
    service = "classic endpoint"


# What we read of an endpoint (keys lower-cased): its Resources, each a Name and a Location.
ENDPOINT_SHAPE = {
    "type": "object",
    "properties": {
        "resources": {
            "type": ["array", "null"],
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "location": {
                        "type": ["object", "null"],
                        "properties": {
                            "baselocation": {"type": ["string", "null"]},
                            "relativelocation": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        }
    },
}


class ClassicEndpointClient:
    def __init__(
        self, endpoint_url: str, api_key: str, *, timeout: float = 30.0, session: requests.Session | None = None
    ) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self._api_key = api_key
        self._timeout = (min(10.0, timeout), timeout)
        self._session = session or make_session()

    def _call(self, operation: str, method: str, body: Any = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
            data = json.dumps(body).encode("utf-8")
        return send(
            self._session,
            ClassicError,
            operation,
            method,
            self.endpoint_url,
            headers=headers,
            timeout=self._timeout,
            body=data,
            secrets=(self._api_key,),
        )

    def get(self) -> dict:
        """The endpoint, as the management API describes it (its shape checked)."""
        return read_json(self._call("get", "GET"), ClassicError, "get", ENDPOINT_SHAPE)

    def update_resource(self, resource_name: str, location: dict[str, str]) -> None:
        """Point the endpoint's trained-model resource at a new ``.ilearner``."""
        self._call("update", "PATCH", {"Resources": [{"Name": resource_name, "Location": location}]})

    def resource_location(self, resource_name: str) -> dict | None:
        """The ``Location`` the endpoint reports for ``resource_name`` (keys matched case-insensitively)."""
        for resource in ci_get(self.get(), "Resources") or []:
            if ci_get(resource, "Name") == resource_name:
                return ci_get(resource, "Location") or {}
        return None


class ClassicDeployer:
    """A classic endpoint gets our own read SAS for the model, valid ``DEPLOY_SAS_DAYS`` (BES's
    result SAS is short-lived and could expire before the update, a known failure of hand-run scripts)."""

    def __init__(self, target: ClassicTarget, storage, sas_days: int, timeout: float, session=None) -> None:
        self.target, self.storage, self.sas_days = target, storage, sas_days
        self.client = ClassicEndpointClient(target.endpoint_url, target.api_key, timeout=timeout, session=session)

    def _location(self, model_path: str, sas: str) -> dict[str, str]:
        return {"BaseLocation": self.storage.blob_base_location, "RelativeLocation": model_path, "SasBlobToken": sas}

    def put(self, model_path: str) -> None:
        container, blob = model_path.split("/", 1)
        expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=self.sas_days)
        sas = self.storage.blob_sas(container, blob, "r", expiry)
        self.client.update_resource(self.target.resource_name, self._location(model_path, sas))

    def live(self) -> str | None:
        location = self.client.resource_location(self.target.resource_name)
        if location is None:
            raise ClassicError(
                f"the endpoint has no resource named {self.target.resource_name!r}",
                operation="verify",
                code="ResourceNotFound",
            )
        base = str(ci_get(location, "BaseLocation") or "").rstrip("/") + "/"
        relative = str(ci_get(location, "RelativeLocation") or "").lstrip("/")
        return relative if base == self.storage.blob_base_location else f"{base}{relative}"

    def probe(self) -> str:
        if self.client.resource_location(self.target.resource_name) is None:
            raise ClassicError(
                f"the endpoint has no resource named {self.target.resource_name!r}",
                operation="get",
                code="ResourceNotFound",
            )
        return f"endpoint reachable, key accepted; resource {self.target.resource_name!r} found"

    def preview(self, model_path: str) -> tuple[str, dict]:
        location = self._location(model_path, "?sv=...&sr=b&sp=r&sig=REDACTED")
        return f"PATCH {self.target.endpoint_url}", {
            "Resources": [{"Name": self.target.resource_name, "Location": location}]
        }


def build(target: ClassicTarget, svc) -> ClassicDeployer:
    s = svc.settings
    return ClassicDeployer(target, svc.storage, s.deploy_sas_days, s.http_timeout_seconds, svc.session())
