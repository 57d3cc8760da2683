"""Azure ML (v2) managed online endpoints and deployments, and their scoring URI.

* Endpoints: GET, PUT (the whole endpoint: an LRO, 201/200 + ``Azure-AsyncOperation``; ``traffic``
  and ``mirrorTraffic`` take effect when the operation succeeds), PATCH (``tags``/``identity`` only,
  as the spec's body allows), ``listKeys`` and ``token``.
* Deployments: GET, list, PUT (an LRO; the model is loaded from the registered version when it ends),
  DELETE (202 + ``Location``).
* Scoring (``POST {scoringUri}``): the credential of the endpoint's ``authMode``; the
  ``azureml-model-deployment`` header routes straight to a deployment (never mirrored), otherwise the
  traffic map picks one and the mirror map copies a share; an MLflow ``input_data`` body (split
  orientation) scored by the deployment's model.

Strict where the reference is (``../shared/reference/azure-ml-v2-protocol.md`` §5, the spec's rules
for the maps): traffic sums to 100 (or is empty), mirror sums to at most 50 on one deployment, both
name only existing deployments, a deployment gets live or mirrored traffic, not both, a deployment
with traffic cannot be deleted, one operation at a time per endpoint (409 otherwise). Faults:
``v2.online.provision`` with ``fail`` (the next deployment's provisioning ends Failed),
``v2.online.degrade`` with ``fail`` and ``path`` (a matching deployment answers every scoring request
with a 500 once it has live traffic), ``v2.online.stuck`` (the next operation never ends), HTTP faults
per route (``v2.online.score``, ``v2.online.endpoint.put``...), and the admin route
``POST v2/online/deployments`` to change a deployment's ``provisioningState`` or error rate.
"""

from __future__ import annotations

import copy
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emulator import training
from emulator.server import HttpError, Request, Response

if TYPE_CHECKING:
    from emulator.v2 import AzureMLv2, Workspace

ENDPOINT = r"/onlineEndpoints/(?P<ep>[^/]+)"
DEPLOYMENT = ENDPOINT + r"/deployments/(?P<dep>[^/]+)"
NAME = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")  # 3-32 characters (azure-ai-ml's rule)
AUTH_MODES = ("AMLToken", "Key", "AADToken")
MODEL_ID = re.compile(
    r"^(?P<ws>/subscriptions/.+/workspaces/[^/]+)/models/(?P<model>[^/]+)/versions/(?P<version>[^/]+)$"
)
READ_ONLY = ("provisioningState", "scoringUri", "swaggerUri")
TRACKED = ("location", "identity", "kind", "sku", "tags")  # what a PUT keeps besides properties


def _now_iso() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _error(message: str, status: int = 400, code: str = "UserError") -> HttpError:
    return HttpError(status, code, message)


@dataclass
class Deployment:
    name: str
    body: dict  # location, sku, tags, kind, identity, properties (as stored, without read-only fields)
    state: str = "Creating"
    created: str = field(default_factory=_now_iso)
    model: dict | None = None  # the loaded model, once provisioned
    degrade: str | None = None  # fails every scoring request once it has live traffic
    error_rate: float = 0.0  # a share of scoring requests that fail (admin)
    scored: int = 0
    mirrored: int = 0
    failed: int = 0


@dataclass
class OnlineEndpoint:
    name: str
    workspace: Workspace
    body: dict
    state: str = "Succeeded"
    keys: dict[str, str] = field(default_factory=lambda: {"primaryKey": "", "secondaryKey": ""})
    deployments: dict[str, Deployment] = field(default_factory=dict)  # lower-cased name -> deployment
    busy: str | None = None  # the operation in progress
    created: str = field(default_factory=_now_iso)

    @property
    def resource_id(self) -> str:
        return f"{self.workspace.resource_id}/onlineEndpoints/{self.name}"

    def traffic(self) -> dict[str, int]:
        return dict(self.body["properties"].get("traffic") or {})

    def mirror(self) -> dict[str, int]:
        return dict(self.body["properties"].get("mirrorTraffic") or {})


class OnlineEndpoints:
    """Managed online endpoints of the v2 workspaces, served by the v2 emulator's process."""

    def __init__(self, v2: AzureMLv2) -> None:
        self.v2, self.emulator = v2, v2.emulator
        self.operations: dict[str, dict] = {}
        self.tokens: dict[str, tuple[str, float]] = {}  # AML token -> (endpoint id, expiry)
        from emulator.v2 import WS

        route = self.emulator.route
        route("GET", WS + ENDPOINT, "v2.online.endpoint.get", self.get_endpoint)
        route("PUT", WS + ENDPOINT, "v2.online.endpoint.put", self.put_endpoint)
        route("PATCH", WS + ENDPOINT, "v2.online.endpoint.patch", self.patch_endpoint)
        route("POST", WS + ENDPOINT + r"/listKeys", "v2.online.keys", self.list_keys)
        route("POST", WS + ENDPOINT + r"/token", "v2.online.token", self.get_token)
        route("GET", WS + ENDPOINT + r"/deployments", "v2.online.deployments.list", self.list_deployments)
        route("GET", WS + DEPLOYMENT, "v2.online.deployment.get", self.get_deployment)
        route("PUT", WS + DEPLOYMENT, "v2.online.deployment.put", self.put_deployment)
        route("DELETE", WS + DEPLOYMENT, "v2.online.deployment.delete", self.delete_deployment)
        status = r"/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.MachineLearningServices/locations/[^/]+"
        route("GET", status + r"/mfeOperationsStatus/(?P<op>[^/]+)", "v2.online.operation", self.operation)
        route("GET", status + r"/mfeOperationResults/(?P<op>[^/]+)", "v2.online.operation_result", self.result)
        route("POST", r"/online" + WS + ENDPOINT + r"/score", "v2.online.score", self.score)
        self.emulator.admin("POST", "v2/online/deployments", self._admin_deployment)
        self.emulator.admin("GET", "v2/online", self._admin_summary)

    # --- set-up and admin ------------------------------------------------------------------------

    def add(self, workspace: Workspace, name: str, auth_mode: str) -> OnlineEndpoint:
        body = {
            "location": workspace.location,
            "identity": {"type": "SystemAssigned"},
            "kind": "Managed",
            "tags": {},
            "properties": {"authMode": auth_mode, "description": "", "traffic": {}, "mirrorTraffic": {}},
        }
        endpoint = OnlineEndpoint(name, workspace, body)
        endpoint.keys = {"primaryKey": secrets.token_urlsafe(32), "secondaryKey": secrets.token_urlsafe(32)}
        workspace.online_endpoints[name.lower()] = endpoint
        return endpoint

    def _all(self) -> list[OnlineEndpoint]:
        return [e for w in self.v2.workspaces.values() for e in w.online_endpoints.values()]

    def _admin_deployment(self, request: Request) -> Response:
        """``{"endpoint", "deployment", "provisioningState"?, "error_rate"?}``: what a test or demo breaks."""
        spec = request.json() or {}
        endpoint = next((e for e in self._all() if e.name.lower() == str(spec.get("endpoint")).lower()), None)
        deployment = endpoint.deployments.get(str(spec.get("deployment")).lower()) if endpoint else None
        if deployment is None:
            raise HttpError(404, "NotFound", "no such endpoint or deployment")
        with self.emulator.lock:
            if "provisioningState" in spec:
                deployment.state = str(spec["provisioningState"])
            if "error_rate" in spec:
                deployment.error_rate = float(spec["error_rate"])
        return Response(200, self._deployment_resource(endpoint, deployment))

    def _admin_summary(self, request: Request) -> Response:
        return Response(
            200,
            [
                {
                    "endpoint": e.name,
                    "traffic": e.traffic(),
                    "mirrorTraffic": e.mirror(),
                    "deployments": {
                        d.name: {
                            "state": d.state,
                            "model": d.body["properties"].get("model"),
                            "scored": d.scored,
                            "mirrored": d.mirrored,
                            "failed": d.failed,
                        }
                        for d in e.deployments.values()
                    },
                }
                for e in self._all()
            ],
        )

    # --- lookups ---------------------------------------------------------------------------------

    def _endpoint(self, request: Request) -> OnlineEndpoint:
        workspace = self.v2._workspace(request)
        endpoint = workspace.online_endpoints.get(request.params["ep"].lower())
        if endpoint is None:
            raise HttpError(404, "ResourceNotFound", f"Online endpoint {request.params['ep']} could not be found.")
        return endpoint

    def _deployment(self, request: Request) -> tuple[OnlineEndpoint, Deployment]:
        endpoint = self._endpoint(request)
        deployment = endpoint.deployments.get(request.params["dep"].lower())
        if deployment is None:
            raise HttpError(404, "ResourceNotFound", f"Deployment {request.params['dep']} could not be found.")
        return endpoint, deployment

    def _scoring_uri(self, endpoint: OnlineEndpoint) -> str:
        return f"{self.emulator.base_url}/online{endpoint.resource_id}/score"

    def _endpoint_resource(self, endpoint: OnlineEndpoint) -> dict:
        body = copy.deepcopy(endpoint.body)
        identity = body.get("identity") or {}
        if identity.get("type", "None") != "None":
            identity.update(principalId=str(uuid.UUID(int=1)), tenantId=str(uuid.UUID(int=2)))
        properties = body["properties"]
        properties.update(
            provisioningState=endpoint.state,
            scoringUri=self._scoring_uri(endpoint),
            swaggerUri=self._scoring_uri(endpoint).replace("/score", "/swagger.json"),
        )
        return {
            "id": endpoint.resource_id,
            "name": endpoint.name,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
            **body,
            "systemData": {"createdAt": endpoint.created, "createdBy": "autopilot", "createdByType": "Application"},
        }

    def _deployment_resource(self, endpoint: OnlineEndpoint, deployment: Deployment) -> dict:
        body = copy.deepcopy(deployment.body)
        body["properties"]["provisioningState"] = deployment.state
        return {
            "id": f"{endpoint.resource_id}/deployments/{deployment.name}",
            "name": deployment.name,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
            **body,
            "systemData": {"createdAt": deployment.created, "createdBy": "autopilot", "createdByType": "Application"},
        }

    # --- endpoints -------------------------------------------------------------------------------

    def get_endpoint(self, request: Request) -> Response:
        return Response(200, self._endpoint_resource(self._endpoint(request)))

    def put_endpoint(self, request: Request) -> Response:
        workspace = self.v2._workspace(request)
        name = request.params["ep"]
        body = self.v2._body(request)
        if not isinstance(body.get("location"), str) or not body["location"]:
            raise _error("location is required (an online endpoint is a tracked resource).")
        properties = {k: v for k, v in body["properties"].items() if k not in READ_ONLY}
        if properties.get("authMode") not in AUTH_MODES:
            raise _error(f"properties.authMode is required: one of {', '.join(AUTH_MODES)}.")
        with self.emulator.lock:
            endpoint = workspace.online_endpoints.get(name.lower())
            if endpoint is None:
                if not (3 <= len(name) <= 32 and NAME.fullmatch(name)):
                    raise _error(f"Endpoint name {name!r} is not valid: 3-32 letters, digits and '-'.")
                endpoint = OnlineEndpoint(name, workspace, {"properties": {"traffic": {}, "mirrorTraffic": {}}})
                endpoint.keys = {"primaryKey": secrets.token_urlsafe(32), "secondaryKey": secrets.token_urlsafe(32)}
                created = True
            else:
                created = False
                if endpoint.busy:
                    raise HttpError(409, "Conflict", f"Endpoint {name} has an operation in progress ({endpoint.busy}).")
            traffic = _weights(properties.get("traffic"), "traffic")
            mirror = _weights(properties.get("mirrorTraffic"), "mirrorTraffic")
            self._check_maps(endpoint, traffic, mirror)
            stored = {k: copy.deepcopy(v) for k, v in body.items() if k in TRACKED}
            if isinstance(stored.get("identity"), dict):
                stored["identity"] = {
                    k: v for k, v in stored["identity"].items() if k not in ("principalId", "tenantId")
                }
            stored["properties"] = {**properties, "traffic": traffic, "mirrorTraffic": mirror}  # the PUT replaces all
            if created:
                workspace.online_endpoints[name.lower()] = endpoint
                endpoint.body = {**stored, "properties": {**stored["properties"], "traffic": {}, "mirrorTraffic": {}}}
            endpoint.state = "Creating" if created else "Updating"
            headers = self._start(endpoint, "update", lambda: self._apply_endpoint(endpoint, stored))
        return Response(201 if created else 200, self._endpoint_resource(endpoint), headers)

    def _check_maps(self, endpoint: OnlineEndpoint, traffic: dict[str, int], mirror: dict[str, int]) -> None:
        names = {d.lower(): dep for d, dep in endpoint.deployments.items()}
        for what, weights in (("traffic", traffic), ("mirrorTraffic", mirror)):
            for name, share in weights.items():
                deployment = names.get(name.lower())
                if deployment is None:
                    raise _error(f"{what} names deployment {name!r}, which does not exist on this endpoint.")
                if share > 0 and deployment.state not in ("Succeeded", "Updating", "Scaling"):
                    raise _error(f"Deployment {name} is {deployment.state}: it cannot take {what}.")
        if traffic and sum(traffic.values()) != 100:
            raise _error(f"Traffic values need to sum to 100 (they sum to {sum(traffic.values())}).")
        if sum(mirror.values()) > 50:
            raise _error(f"Mirror traffic values need to sum to utmost 50 (they sum to {sum(mirror.values())}).")
        mirrored = [n for n, share in mirror.items() if share > 0]
        if len(mirrored) > 1:
            raise _error("Only one deployment can receive mirror traffic.")
        both = [n for n in mirrored if traffic.get(n, 0) > 0]
        if both:
            raise _error(f"Deployment {both[0]} cannot receive both live and mirror traffic.")

    def _apply_endpoint(self, endpoint: OnlineEndpoint, stored: dict) -> None:
        endpoint.body = stored

    def patch_endpoint(self, request: Request) -> Response:
        endpoint = self._endpoint(request)
        try:
            body = request.json() or {}
        except ValueError:
            body = None
        if not isinstance(body, dict) or set(body) - {"tags", "identity"}:
            raise _error("An online endpoint PATCH accepts only tags and identity (use PUT for traffic).")
        with self.emulator.lock:
            for key in ("tags", "identity"):
                if key in body:
                    endpoint.body[key] = copy.deepcopy(body[key])
        return Response(200, self._endpoint_resource(endpoint))

    def list_keys(self, request: Request) -> Response:
        endpoint = self._endpoint(request)
        if endpoint.body["properties"]["authMode"] != "Key":
            raise _error(f"Endpoint {endpoint.name} uses {endpoint.body['properties']['authMode']}, not keys.")
        return Response(200, dict(endpoint.keys))

    def get_token(self, request: Request) -> Response:
        endpoint = self._endpoint(request)
        if endpoint.body["properties"]["authMode"] != "AMLToken":
            raise _error(f"Endpoint {endpoint.name} uses {endpoint.body['properties']['authMode']}, not AML tokens.")
        token = secrets.token_urlsafe(32)
        expiry = time.time() + 3600
        self.tokens[token] = (endpoint.resource_id.lower(), expiry)
        return Response(
            200,
            {
                "accessToken": token,
                "tokenType": "Bearer",
                "expiryTimeUtc": int(expiry),
                "refreshAfterTimeUtc": int(expiry - 1800),
            },
        )

    # --- deployments -----------------------------------------------------------------------------

    def list_deployments(self, request: Request) -> Response:
        endpoint = self._endpoint(request)
        return Response(
            200, {"value": [self._deployment_resource(endpoint, d) for d in list(endpoint.deployments.values())]}
        )

    def get_deployment(self, request: Request) -> Response:
        return Response(200, self._deployment_resource(*self._deployment(request)))

    def put_deployment(self, request: Request) -> Response:
        endpoint = self._endpoint(request)
        name = request.params["dep"]
        body = self.v2._body(request)
        properties = {k: v for k, v in body["properties"].items() if k != "provisioningState"}
        if not isinstance(body.get("location"), str) or not body["location"]:
            raise _error("location is required (an online deployment is a tracked resource).")
        if properties.get("endpointComputeType") != "Managed":
            raise _error("properties.endpointComputeType is required and must be 'Managed' on a managed endpoint.")
        version = self._model_version(endpoint.workspace, properties.get("model"))
        fault = self.emulator.take_fault("v2.online.provision", kind="job", path=name)
        degrade = self.emulator.take_fault("v2.online.degrade", kind="job", path=name)
        with self.emulator.lock:
            deployment = endpoint.deployments.get(name.lower())
            created = deployment is None
            if created:
                if not (3 <= len(name) <= 32 and NAME.fullmatch(name)):
                    raise _error(f"Deployment name {name!r} is not valid: 3-32 letters, digits and '-'.")
                deployment = Deployment(name, {})
            elif deployment.state in ("Creating", "Updating", "Deleting"):
                raise HttpError(
                    409, "Conflict", f"Deployment {name} has an operation in progress ({deployment.state})."
                )
            stored = {k: copy.deepcopy(v) for k, v in body.items() if k in TRACKED}
            stored["properties"] = properties
            deployment.body = stored
            deployment.state = "Creating" if created else "Updating"
            deployment.degrade = degrade.fail if degrade else None
            endpoint.deployments[name.lower()] = deployment
            failure = fault.fail if fault else None
            headers = self._start(
                endpoint, "deployment", lambda: self._provision(endpoint, deployment, version, failure), deployment
            )
        return Response(201 if created else 200, self._deployment_resource(endpoint, deployment), headers)

    def _model_version(self, workspace: Workspace, model_id: object) -> dict:
        match = MODEL_ID.fullmatch(str(model_id or ""))
        if match is None or match["ws"].lower() != workspace.resource_id.lower():
            raise _error("properties.model must be the ARM id of a model version in this workspace.")
        version = (workspace.models.get(match["model"]) or {}).get(match["version"])
        if version is None:
            raise HttpError(404, "ResourceNotFound", f"Model {match['model']}:{match['version']} could not be found.")
        return version

    def _provision(self, endpoint: OnlineEndpoint, deployment: Deployment, version: dict, failure: str | None) -> None:
        if failure:
            raise HttpError(400, "DeploymentFailed", failure)
        deployment.model = self._load(endpoint.workspace, version)

    def _load(self, workspace: Workspace, version: dict) -> dict:
        """The model a version names: its job's output folder's ``model.json`` in workspace storage."""
        from emulator.v2 import DATASTORE_URI, JOB_OUTPUT_URI

        uri = JOB_OUTPUT_URI.fullmatch(version["properties"]["modelUri"])
        job = workspace.jobs.get(uri["job"]) if uri else None
        folder = DATASTORE_URI.fullmatch(str(((job.body.get("outputs") or {}).get(uri["output"]) or {}).get("uri")))
        if folder is None:
            raise HttpError(400, "ModelNotFound", "The model version's files could not be found.")
        blob = self.v2._account().get_blob_client("azureml", folder["path"].rstrip("/") + "/model.json")
        try:
            return training.load_model(blob.download_blob().readall())
        except Exception as exc:
            raise HttpError(400, "ModelLoadFailed", f"The model could not be loaded: {type(exc).__name__}") from None

    def delete_deployment(self, request: Request) -> Response:
        endpoint, deployment = self._deployment(request)
        with self.emulator.lock:
            for what, weights in (("traffic", endpoint.traffic()), ("mirror traffic", endpoint.mirror())):
                if any(n.lower() == deployment.name.lower() and share > 0 for n, share in weights.items()):
                    raise _error(f"Deployment {deployment.name} has {what}: move it away before deleting.")
            if deployment.state in ("Creating", "Updating"):
                raise HttpError(409, "Conflict", f"Deployment {deployment.name} has an operation in progress.")
            deployment.state = "Deleting"

            def remove() -> None:
                endpoint.deployments.pop(deployment.name.lower(), None)
                for key in ("traffic", "mirrorTraffic"):  # a zero entry for a deleted deployment goes too
                    weights = endpoint.body["properties"].get(key) or {}
                    endpoint.body["properties"][key] = {
                        n: v for n, v in weights.items() if n.lower() != deployment.name.lower()
                    }

            headers = self._start(endpoint, "delete", remove, deployment, location=True)
        return Response(202, None, headers)

    # --- long-running operations -----------------------------------------------------------------

    def _start(self, endpoint, what, apply, deployment=None, *, location=False) -> dict:
        """Run ``apply`` after ``lro_seconds`` as an operation; the endpoint takes one at a time."""
        op = uuid.uuid4().hex
        stuck = self.emulator.take_fault("v2.online.stuck")
        self.operations[op] = {"name": op, "status": "InProgress", "startTime": _now_iso()}
        if deployment is None:
            endpoint.busy = op
        base = (
            f"{self.emulator.base_url}/subscriptions/{endpoint.workspace.subscription}/providers/"
            f"Microsoft.MachineLearningServices/locations/{endpoint.workspace.location}"
        )
        api = "api-version=2025-12-01"
        timeout = str(self.emulator.config.get("online_operation_timeout", "PT1H"))
        if not stuck:
            threading.Thread(target=self._finish, args=(op, endpoint, apply, deployment), daemon=True).start()
        if location:
            return {"Location": f"{base}/mfeOperationResults/{op}?{api}", "Retry-After": "1"}
        return {
            "Azure-AsyncOperation": f"{base}/mfeOperationsStatus/{op}?{api}",
            "x-ms-async-operation-timeout": timeout,
        }

    def _finish(self, op: str, endpoint: OnlineEndpoint, apply, deployment: Deployment | None) -> None:
        time.sleep(float(self.emulator.config.get("lro_seconds", 0.5)))
        if op not in self.operations:
            return  # the emulator was reset meanwhile: this operation's world is gone
        try:
            apply()
        except HttpError as exc:
            with self.emulator.lock:
                error = exc.body["error"]
                self.operations[op].update(status="Failed", endTime=_now_iso(), error=dict(error))
                if deployment is not None:
                    deployment.state = "Failed"
                else:
                    endpoint.state, endpoint.busy = "Failed", None
            return
        with self.emulator.lock:
            if deployment is not None and deployment.state != "Deleting":
                deployment.state = "Succeeded"
            if deployment is None:
                endpoint.state, endpoint.busy = "Succeeded", None
            self.operations[op].update(status="Succeeded", endTime=_now_iso())

    def operation(self, request: Request) -> Response:
        self.v2.identity.require(request, "https://management.azure.com")
        op = self.operations.get(request.params["op"])
        if op is None:
            raise HttpError(404, "NotFound", "The operation could not be found.")
        return Response(200, dict(op))

    def result(self, request: Request) -> Response:
        self.v2.identity.require(request, "https://management.azure.com")
        op = self.operations.get(request.params["op"])
        if op is None:
            raise HttpError(404, "NotFound", "The operation could not be found.")
        return Response(202 if op["status"] == "InProgress" else 200, None, {"Retry-After": "1"})

    # --- scoring ---------------------------------------------------------------------------------

    def score(self, request: Request) -> Response:
        workspace = self.v2._lookup(request)
        endpoint = workspace.online_endpoints.get(request.params["ep"].lower()) if workspace else None
        if endpoint is None:
            raise HttpError(404, "NotFound", "The endpoint could not be found.")
        self._authorize(request, endpoint)
        named = request.headers.get("azureml-model-deployment")
        with self.emulator.lock:
            if named:
                deployment = endpoint.deployments.get(named.lower())
                if deployment is None:
                    raise HttpError(404, "NotFound", f"Deployment {named} could not be found on the endpoint.")
                mirror = None
            else:
                deployment = _pick(endpoint, endpoint.traffic())
                if deployment is None:
                    raise HttpError(
                        404,
                        "NoValidDeployments",
                        "No valid deployments to route to: no deployment has traffic; "
                        "use the azureml-model-deployment header to reach one.",
                    )
                mirror = _pick(endpoint, endpoint.mirror())
        rows = _rows(request)
        if mirror is not None and mirror.model is not None:
            mirror.mirrored += 1  # a copy of the request; its answer is dropped
        return self._score_with(endpoint, deployment, rows)

    def _authorize(self, request: Request, endpoint: OnlineEndpoint) -> None:
        mode = endpoint.body["properties"]["authMode"]
        if mode == "AADToken":
            self.v2.identity.require(request, "https://ml.azure.com")
            return
        scheme, _, credential = (request.headers.get("Authorization") or "").partition(" ")
        credential = credential.strip()
        if mode == "Key":
            valid = scheme.lower() == "bearer" and credential in endpoint.keys.values() and credential
        else:
            issued = self.tokens.get(credential)
            valid = scheme.lower() == "bearer" and issued and issued[0] == endpoint.resource_id.lower()
            valid = valid and issued[1] > time.time()
        if not valid:
            raise HttpError(401, "Unauthorized", f"The request is not authorized for this endpoint ({mode}).")

    def _score_with(self, endpoint: OnlineEndpoint, deployment: Deployment, rows: list[dict]) -> Response:
        with self.emulator.lock:
            deployment.scored += 1
            live = any(n.lower() == deployment.name.lower() and s > 0 for n, s in endpoint.traffic().items())
            failing = deployment.state not in ("Succeeded", "Updating", "Scaling") or deployment.model is None
            degraded = deployment.degrade is not None and live
            unlucky = int(deployment.scored * deployment.error_rate) > int(
                (deployment.scored - 1) * deployment.error_rate
            )
            if failing or degraded or unlucky:
                deployment.failed += 1
        if failing:
            raise HttpError(502, "BadGateway", f"Deployment {deployment.name} is {deployment.state}.")
        if degraded or unlucky:
            message = deployment.degrade or "An unexpected error occurred in the scoring script."
            raise HttpError(500, "InternalServerError", message)
        try:
            predictions = training.score(deployment.model, rows)
        except (KeyError, ValueError, TypeError) as exc:
            raise HttpError(400, "BadRequest", f"Failed to enforce the model's input schema: {exc}") from None
        return Response(200, predictions)


def _weights(value: object, what: str) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 100
        for k, v in value.items()
    ):
        raise _error(f"properties.{what} must map deployment names to whole percentages from 0 to 100.")
    return dict(value)


def _pick(endpoint: OnlineEndpoint, weights: dict[str, int]) -> Deployment | None:
    """A deployment drawn by the weights (percentages); ``None`` for the rest up to 100 (a mirror map's)."""
    import random

    draw = random.uniform(0, 100)
    total = 0
    for name, weight in weights.items():
        total += weight
        if weight > 0 and draw < total:
            return endpoint.deployments.get(name.lower())
    return None


def _rows(request: Request) -> list[dict]:
    """The MLflow ``input_data`` body (split orientation: ``columns`` and ``data``) as records."""
    try:
        body = request.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    data = body.get("input_data") if isinstance(body, dict) else None
    columns, values = (data.get("columns"), data.get("data")) if isinstance(data, dict) else (None, None)
    if not (isinstance(columns, list) and isinstance(values, list) and all(isinstance(r, list) for r in values)):
        raise HttpError(400, "BadRequest", 'The body must be {"input_data": {"columns": [...], "data": [[...]]}}.')
    if any(len(r) != len(columns) for r in values):
        raise HttpError(400, "BadRequest", "Every row of input_data.data needs one value per column.")
    return [dict(zip(columns, r, strict=True)) for r in values]


def seed(services: OnlineEndpoints, workspace: Workspace) -> None:
    """Three endpoints without deployments, one per auth mode: ``census-online`` (Key),
    ``census-online-aml`` (AMLToken), ``census-online-aad`` (AADToken)."""
    services.operations.clear()
    services.tokens.clear()
    for name, mode in (("census-online", "Key"), ("census-online-aml", "AMLToken"), ("census-online-aad", "AADToken")):
        services.add(workspace, name, mode)
