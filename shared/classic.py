"""Client for one classic web-service endpoint's management API: read it, and PATCH its trained model.

``PATCH {mgmt}/workspaces/{ws}/webservices/{id}/endpoints/{name}`` with
``{"Resources": [{"Name": <resource>, "Location": {BaseLocation, RelativeLocation, SasBlobToken}}]}``.
No ``api-version`` (no public client sends one). Response bodies are not relied on: success is
verified by reading the endpoint back.
"""

from __future__ import annotations

import json
from typing import Any

import requests

from shared.http import ServiceError, ci_get, make_session, read_json, send


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
