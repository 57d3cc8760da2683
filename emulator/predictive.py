"""The predictive side: classic web-service endpoints (management API + RRS), New (ARM) web services
with their long-running operations, and the App Service managed-identity token endpoint.

A deployment really loads the model the way the service would — through the SAS for a classic
endpoint, through the web service's own storage account for an ARM service — so pointing a service at
a missing or unreadable blob fails, and scoring (RRS) uses whatever model is live.
"""

from __future__ import annotations

import copy
import datetime as dt
import hmac
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from azure.storage.blob import BlobServiceClient

from emulator import sample_data, training
from emulator.blobio import ReferenceError_, parse_reference
from emulator.server import Emulator, HttpError, Request, Response

ARM_API_VERSIONS = ("2017-01-01", "2016-05-01-preview")
ARM_RESOURCE = "https://management.azure.com"
SEED = Path(__file__).parent / "data" / "arm-webservice-seed.json"
_INITIAL_MODEL: dict | None = None


def initial_model() -> dict:
    """The model a service has before any retraining: deliberately mediocre (noisy data)."""
    global _INITIAL_MODEL
    if _INITIAL_MODEL is None:
        _INITIAL_MODEL, _ = training.train(sample_data.generate(400, seed=99, label_noise=0.35))
    return _INITIAL_MODEL


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _ci(mapping: dict, key: str) -> Any:
    """Case-insensitive lookup (the public examples mix ``AssetId``/``assetId``)."""
    for k, v in mapping.items():
        if k.lower() == key.lower():
            return v
    return None


def _check_key(request: Request, keys: tuple[str, ...], detail: str) -> None:
    scheme, _, key = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(key.strip(), k) for k in keys if k):
        raise HttpError(401, "Unauthorized", "Unauthorized", [(detail, "Invalid credentials provided.")])


# --- classic web services -------------------------------------------------------------------------


@dataclass
class Endpoint:
    workspace: str
    webservice: str
    name: str
    keys: tuple[str, str]
    is_default: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    resources: list[dict] = field(default_factory=list)
    model: dict | None = None
    created: str = field(default_factory=_now_iso)
    description: str = ""

    def to_json(self, base_url: str) -> dict:
        return {
            "Name": self.name,
            "Description": self.description,
            "CreationTime": self.created,
            "WorkspaceId": self.workspace,
            "WebServiceId": self.webservice,
            "HelpLocation": f"https://studio.azureml.net/apihelp/workspaces/{self.workspace}/webservices/"
            f"{self.webservice}/endpoints/{self.id}",
            "PrimaryKey": self.keys[0],
            "SecondaryKey": self.keys[1],
            "ApiLocation": f"{base_url}/workspaces/{self.workspace}/services/{self.id}",
            "Version": "2014-09-01",
            "MaxConcurrentCalls": 20,
            "DiagnosticsTraceLevel": "None",
            "ThrottleLevel": "High",
            "PreventUpdate": False,
            "SampleDataEnabled": False,
            "ExperimentLocation": "",
            "Resources": copy.deepcopy(self.resources),
        }


@dataclass
class ClassicWebService:
    workspace: str
    id: str
    name: str
    token: str
    endpoints: dict[str, Endpoint] = field(default_factory=dict)

    def to_json(self) -> dict:
        default = next((e.name for e in self.endpoints.values() if e.is_default), None)
        return {
            "Id": self.id,
            "Name": self.name,
            "Description": "",
            "CreationTime": _now_iso(),
            "WorkspaceId": self.workspace,
            "DefaultEndpointName": default,
            "EndpointCount": len(self.endpoints),
        }


class ClassicManagement:
    """``{mgmt}/workspaces/{ws}/webservices/{id}[/endpoints/{name}]`` and RRS on each endpoint."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.services: dict[tuple[str, str], ClassicWebService] = {}
        base = r"/workspaces/(?P<ws>[^/]+)/webservices"
        emulator.route("GET", base, "classic.list", self.list_services)
        emulator.route("GET", base + r"/(?P<svc>[^/]+)", "classic.get", self.get_service)
        emulator.route("GET", base + r"/(?P<svc>[^/]+)/endpoints", "classic.endpoints", self.list_endpoints)
        emulator.route("GET", base + r"/(?P<svc>[^/]+)/endpoints/(?P<ep>[^/]+)", "classic.endpoint", self.get_endpoint)
        emulator.route("PUT", base + r"/(?P<svc>[^/]+)/endpoints/(?P<ep>[^/]+)", "classic.put", self.put_endpoint)
        emulator.route("PATCH", base + r"/(?P<svc>[^/]+)/endpoints/(?P<ep>[^/]+)", "classic.patch", self.patch)
        emulator.route("DELETE", base + r"/(?P<svc>[^/]+)/endpoints/(?P<ep>[^/]+)", "classic.delete", self.delete)
        emulator.route("POST", r"/workspaces/(?P<ws>[^/]+)/services/(?P<ep>[^/]+)/execute", "rrs.classic", self.execute)

    def add(self, service: ClassicWebService) -> ClassicWebService:
        self.services[(service.workspace.lower(), service.id.lower())] = service
        return service

    def _service(self, request: Request, endpoint_name: str | None = None) -> ClassicWebService:
        service = self.services.get((request.params["ws"].lower(), request.params["svc"].lower()))
        if service is None:
            raise HttpError(
                404, "NotFound", "Resource not found.", [("WebServiceNotFound", "The web service was not found.")]
            )
        keys = (service.token,)
        endpoint = service.endpoints.get(endpoint_name) if endpoint_name else None
        if endpoint is not None:  # an endpoint's own key may manage that endpoint
            keys = (service.token, *endpoint.keys)
        _check_key(request, keys, "ManagementRequestUnauthorized")
        return service

    def _endpoint(self, request: Request) -> tuple[ClassicWebService, Endpoint]:
        service = self._service(request, request.params["ep"])
        endpoint = service.endpoints.get(request.params["ep"])
        if endpoint is None:
            raise HttpError(
                404,
                "NotFound",
                "Resource not found.",
                [("EndpointNotFound", f"The endpoint {request.params['ep']} was not found.")],
            )
        return service, endpoint

    def list_services(self, request: Request) -> Response:
        services = [s for (ws, _), s in self.services.items() if ws == request.params["ws"].lower()]
        if not services:
            raise HttpError(404, "NotFound", "Resource not found.", [("WorkspaceNotFound", "Workspace not found.")])
        _check_key(request, tuple(s.token for s in services), "ManagementRequestUnauthorized")
        return Response(200, [s.to_json() for s in services])

    def get_service(self, request: Request) -> Response:
        return Response(200, self._service(request).to_json())

    def list_endpoints(self, request: Request) -> Response:
        service = self._service(request)
        return Response(200, [e.to_json(self.emulator.base_url) for e in service.endpoints.values()])

    def get_endpoint(self, request: Request) -> Response:
        return Response(200, self._endpoint(request)[1].to_json(self.emulator.base_url))

    def put_endpoint(self, request: Request) -> Response:
        service = self._service(request)
        body = request.json() or {}
        name = request.params["ep"]
        endpoint = service.endpoints.get(name)
        if endpoint is None:
            default = next(e for e in service.endpoints.values() if e.is_default)
            endpoint = Endpoint(
                service.workspace,
                service.id,
                name,
                (secrets.token_urlsafe(48), secrets.token_urlsafe(48)),
                resources=copy.deepcopy(default.resources),
                model=default.model,
            )
            service.endpoints[name] = endpoint
        endpoint.description = str(body.get("Description") or "")
        return Response(200, endpoint.to_json(self.emulator.base_url))

    def delete(self, request: Request) -> Response:
        service, endpoint = self._endpoint(request)
        if endpoint.is_default:
            raise HttpError(
                400,
                "BadArgument",
                "Invalid argument provided.",
                [("CannotDeleteDefaultEndpoint", "The default endpoint cannot be deleted.")],
            )
        del service.endpoints[endpoint.name]
        return Response(200)

    def patch(self, request: Request) -> Response:
        """Update trained-model resources: ``{"Resources": [{"Name", "Location": {...}}]}``."""
        _, endpoint = self._endpoint(request)
        try:
            body = request.json()
        except ValueError:
            body = None
        resources = body.get("Resources") if isinstance(body, dict) else None
        if not isinstance(resources, list) or not resources:
            raise HttpError(
                400,
                "BadArgument",
                "Invalid argument provided.",
                [("RequestBodyInvalid", "The request must carry a non-empty Resources list.")],
            )
        if endpoint.is_default:
            raise HttpError(
                400,
                "InvalidOperation",
                "Invalid operation.",
                [
                    (
                        "UpdateDefaultEndpointNotAllowed",
                        "The default endpoint is kept in sync with the experiment and cannot be updated; "
                        "add a new endpoint to the web service and update that one.",
                    )
                ],
            )
        if not endpoint.resources:
            raise HttpError(
                400,
                "BadArgument",
                "Invalid argument provided.",
                [
                    (
                        "InvalidWebServiceResources",
                        "Sorry, but this feature is not supported or available in this context. This Web Service has "
                        "no updatable resources. We apologize for the inconvenience and are working on improving this "
                        "workflow.",
                    )
                ],
            )
        loaded = []
        for item in resources:
            name = item.get("Name") if isinstance(item, dict) else None
            current = next((r for r in endpoint.resources if r["Name"] == name), None)
            if current is None:
                known = ", ".join(r["Name"] for r in endpoint.resources)
                raise HttpError(
                    400,
                    "BadArgument",
                    "Invalid argument provided.",
                    [
                        (
                            "InvalidResourceName",
                            f"The resource {name!r} is not an updatable resource of this endpoint. "
                            f"Updatable resources: {known}.",
                        )
                    ],
                )
            location = item.get("Location")
            try:
                reference = parse_reference(location, f"resource {name}")
            except ReferenceError_ as exc:
                raise HttpError(400, "BadArgument", "Invalid argument provided.", [(exc.code, str(exc))]) from None
            if reference.extension != ".ilearner":
                raise HttpError(
                    400,
                    "BadArgument",
                    "Invalid argument provided.",
                    [
                        (
                            "InvalidBlobExtension",
                            f"The blob reference: {reference.relative_location} has an invalid or "
                            "missing file extension. Supported file extensions for this output "
                            'type are: ".ilearner".',
                        )
                    ],
                )
            loaded.append((current, location, _load(reference.client())))
        for current, location, model in loaded:
            current["Location"] = {k: location.get(k) for k in ("BaseLocation", "RelativeLocation", "SasBlobToken")}
            endpoint.model = model
        return Response(200)

    def execute(self, request: Request) -> Response:
        workspace, endpoint_id = request.params["ws"].lower(), request.params["ep"].lower()
        endpoints = (e for s in self.services.values() for e in s.endpoints.values())
        endpoint = next((e for e in endpoints if e.id == endpoint_id and e.workspace.lower() == workspace), None)
        if endpoint is None:
            raise HttpError(404, "NotFound", "Resource not found.", [("WebServiceNotFound", "Endpoint not found.")])
        if request.arg("api-version") != "2.0":
            raise HttpError(400, "BadArgument", "Invalid argument provided.", [("BadVersionCall", "Use 2.0.")])
        _check_key(request, endpoint.keys, "ScoreRequestUnauthorized")
        return score_request(request, endpoint.model or initial_model())


def score_request(request: Request, model: dict) -> Response:
    """RRS ``execute``, for both service kinds: with ``format=swagger`` records in and out
    (``"input1": [{column: value}]``), otherwise ``ColumnNames``/``Values`` in and a table out, typed
    ``"table"`` as real responses are (the docs' hand-written sample says ``DataTable``)."""
    if request.arg("api-version") != "2.0":
        raise HttpError(400, "BadArgument", "Invalid argument provided.", [("BadVersionCall", "Use 2.0.")])
    swagger = (request.arg("format") or "").lower() == "swagger"
    try:
        body = request.json() or {}
    except (ValueError, UnicodeDecodeError):
        body = None
    inputs = _ci(body.get("Inputs") or {}, "input1") if isinstance(body, dict) else None
    if swagger and not (isinstance(inputs, list) and all(isinstance(row, dict) for row in inputs)):
        raise HttpError(
            400,
            "BadArgument",
            "Invalid argument provided.",
            [("MissingRequestInput", "Inputs.input1 must be a list of records (format=swagger).")],
        )
    if not swagger and not (isinstance(inputs, dict) and "ColumnNames" in inputs and "Values" in inputs):
        raise HttpError(
            400,
            "BadArgument",
            "Invalid argument provided.",
            [("MissingRequestInput", "Inputs.input1 needs ColumnNames and Values (records need format=swagger).")],
        )
    rows = inputs if swagger else [dict(zip(inputs["ColumnNames"], v, strict=False)) for v in inputs["Values"]]
    names, values = _score(model, rows)
    if swagger:
        output: object = [dict(zip(names, v, strict=True)) for v in values]
    else:
        types = ["Double"] * (len(names) - 2) + ["Int32", "Double"]
        output = {"type": "table", "value": {"ColumnNames": names, "ColumnTypes": types, "Values": values}}
    return Response(200, {"Results": {"output1": output}})


def _load(blob_client) -> dict:
    """Read a model blob as the service would at update time; refuse anything unloadable."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    try:
        data = blob_client.download_blob().readall()
    except ResourceNotFoundError:
        raise HttpError(
            400,
            "BadArgument",
            "Invalid argument provided.",
            [("BlobNotFound", f"The trained model blob {blob_client.blob_name} was not found.")],
        ) from None
    except HttpResponseError as exc:
        raise HttpError(
            400,
            "BadArgument",
            "Invalid argument provided.",
            [
                (
                    "InvalidBlob",
                    f"The trained model blob {blob_client.blob_name} could not be read: HTTP {exc.status_code}.",
                )
            ],
        ) from None
    try:
        return training.load_model(data)
    except training.ModuleError as exc:
        raise HttpError(400, "InvalidOperation", "Invalid operation.", [("IncompatibleModel", str(exc))]) from None


def _score(model: dict, rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    try:
        probabilities = training.score(model, rows)
    except (KeyError, ValueError, TypeError) as exc:
        raise HttpError(
            400,
            "BadUserArgument",
            "Invalid argument provided.",
            [("InputParseError", f"Input could not be scored: {exc}")],
        ) from None
    names = [*model["features"], "Scored Labels", "Scored Probabilities"]
    values = [
        [str(row[f]) for f in model["features"]] + [str(int(p >= 0.5)), f"{p:.6f}"]
        for row, p in zip(rows, probabilities, strict=True)
    ]
    return names, values


# --- New (ARM) web services ---------------------------------------------------------------------


@dataclass
class ArmWebService:
    subscription: str
    resource_group: str
    name: str
    location: str
    definition: dict
    storage_connection_string: str
    keys: dict[str, str]
    service_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    model: dict | None = None
    previous_state: str = "Succeeded"  # restored by an operation that changes nothing

    @property
    def resource_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/"
            f"Microsoft.MachineLearning/webServices/{self.name}"
        )


class ArmWebServices:
    """``Microsoft.MachineLearning/webServices`` GET/PUT/PATCH with ``Azure-AsyncOperation`` LROs."""

    def __init__(self, emulator: Emulator, identity: Identity) -> None:
        self.emulator, self.identity = emulator, identity
        self.services: dict[str, ArmWebService] = {}
        self.operations: dict[str, dict] = {}
        self.storage_connection_string: str | None = None  # the one account the emulator can reach
        resource = (
            r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
            r"Microsoft\.MachineLearning/webServices/(?P<name>[^/]+)"
        )
        emulator.route("GET", resource, "arm.get", self.get)
        emulator.route("PUT", resource, "arm.put", self.put)
        emulator.route("PATCH", resource, "arm.patch", self.patch)
        emulator.route("GET", resource + "/listKeys", "arm.listkeys", self.list_keys)  # GET in the spec
        emulator.route(
            "GET",
            r"/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.MachineLearning/locations/"
            r"(?P<loc>[^/]+)/operationsStatus/(?P<op>[^/]+)",
            "arm.operation",
            self.operation,
        )
        emulator.route(
            "POST", r"/subscriptions/(?P<sub>[^/]+)/services/(?P<svc>[^/]+)/execute", "rrs.arm", self.execute
        )

    def add(self, service: ArmWebService) -> ArmWebService:
        self.services[service.resource_id.lower()] = service
        return service

    def _check(self, request: Request) -> None:
        self.identity.require(request, ARM_RESOURCE)
        if request.arg("api-version") not in ARM_API_VERSIONS:
            raise HttpError(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{request.arg('api-version')}' is invalid. The supported versions are "
                f"'{', '.join(ARM_API_VERSIONS)}'.",
            )

    @staticmethod
    def _key(request: Request) -> str:
        p = request.params
        return (
            f"/subscriptions/{p['sub']}/resourceGroups/{p['rg']}/providers/Microsoft.MachineLearning/"
            f"webServices/{p['name']}"
        ).lower()

    def _find(self, request: Request) -> ArmWebService:
        self._check(request)
        service = self.services.get(self._key(request))
        if service is None:
            raise HttpError(
                404,
                "NotFound",
                "The specified resource was not found.",
                [
                    (
                        "WebServiceNotFound",
                        f"No Web Service could be found with the provided name: {request.params['name']}.",
                    )
                ],
            )
        return service

    def _body(self, service: ArmWebService) -> dict:
        body = copy.deepcopy(service.definition)
        body.update(
            id=service.resource_id,
            name=service.name,
            type="Microsoft.MachineLearning/webServices",
            location=service.location,
        )
        return body

    def get(self, request: Request) -> Response:
        return Response(200, self._body(self._find(request)))

    def list_keys(self, request: Request) -> Response:
        return Response(200, dict(self._find(request).keys))

    def put(self, request: Request) -> Response:
        """Create (201, as the spec's example) or overwrite (200) a web service."""
        self._check(request)
        if self._key(request) in self.services:
            return self._update(request, self._find(request), replace=True)
        return self._create(request)

    def patch(self, request: Request) -> Response:
        return self._update(request, self._find(request), replace=False)

    def _create(self, request: Request) -> Response:
        body, properties = self._request_properties(request)
        location = _ci(body, "location")
        if not isinstance(location, str) or not location.strip():
            raise HttpError(400, "LocationRequired", "The location property is required for this definition.")
        if not self.storage_connection_string:
            raise HttpError(400, "BadRequest", "The emulator has no storage account (--storage-connection-string).")
        account = BlobServiceClient.from_connection_string(self.storage_connection_string).account_name
        storage = _ci(properties, "storageAccount")
        if not isinstance(storage, dict) or _ci(storage, "name") != account:
            raise HttpError(
                400,
                "BadRequest",
                "The request is invalid.",
                [
                    (
                        "StorageAccountNotFound",
                        f"properties.storageAccount.name must be '{account}', the account this emulator can reach.",
                    )
                ],
            )
        p = request.params
        keys = _ci(properties, "keys") if isinstance(_ci(properties, "keys"), dict) else {}
        service = ArmWebService(
            p["sub"],
            p["rg"],
            p["name"],
            location,
            {"tags": body.get("tags") or {}, "properties": {"provisioningState": "Provisioning"}},
            self.storage_connection_string,
            {
                "primary": keys.get("primary") or secrets.token_urlsafe(24),
                "secondary": keys.get("secondary") or secrets.token_urlsafe(24),
            },
        )
        now = _now_iso()
        service.definition["properties"] = {
            **_without_secrets(properties),
            "createdOn": now,
            "modifiedOn": now,
            "swaggerLocation": f"{self.emulator.base_url}/subscriptions/{service.subscription}/services/"
            f"{service.service_id}/swagger.json",
            "provisioningState": "Provisioning",
        }
        self.add(service)
        headers = self._start_operation(request, service, properties, replace=True)
        return Response(201, self._body(service), headers)

    @staticmethod
    def _request_properties(request: Request) -> tuple[dict, dict]:
        try:
            body = request.json()
        except ValueError:
            body = None
        properties = _ci(body, "properties") if isinstance(body, dict) else None
        if not isinstance(properties, dict):
            raise HttpError(
                400,
                "BadRequest",
                "The request is invalid.",
                [("InvalidRequestContent", "The request body must have a properties object.")],
            )
        if _ci(properties, "packageType") != "Graph":
            raise HttpError(
                400,
                "BadRequest",
                "The request is invalid.",
                [("MissingPackageType", "properties.packageType must be 'Graph'.")],
            )
        return body, properties

    def _update(self, request: Request, service: ArmWebService, *, replace: bool) -> Response:
        _body, properties = self._request_properties(request)
        current = service.definition["properties"]
        storage = _ci(properties, "storageAccount")
        configured = _ci(_ci(current, "storageAccount") or {}, "name")
        if isinstance(storage, dict) and _ci(storage, "name") not in (None, configured):
            raise HttpError(
                400,
                "BadRequest",
                "The request is invalid.",
                [
                    (
                        "CannotChangeStorageAccount",
                        "The StorageAccount cannot be changed. Currently configured storage "
                        f"account name = '{configured}' .",
                    )
                ],
            )
        headers = self._start_operation(request, service, properties, replace=replace)
        minimal = {
            "id": service.resource_id,
            "name": service.name,
            "type": "Microsoft.MachineLearning/webServices",
            "location": service.location,
            "tags": service.definition.get("tags", {}),
            "properties": {"provisioningState": "Provisioning"},
        }
        return Response(200, minimal, headers)

    def _start_operation(self, request: Request, service: ArmWebService, properties: dict, *, replace: bool) -> dict:
        """Run the update as a long-running operation; meanwhile a GET shows ``Provisioning``."""
        operation = uuid.uuid4()
        op_url = (
            f"{self.emulator.base_url}/subscriptions/{service.subscription}/providers/"
            f"Microsoft.MachineLearning/locations/{service.location.replace(' ', '').lower()}/"
            f"operationsStatus/{operation}?api-version={request.arg('api-version')}"
        )
        self.operations[str(operation)] = {
            "id": urlsplit(op_url).path,
            "name": str(operation),
            "status": "Provisioning",
            "startTime": _now_iso(),
            "percentComplete": 0.0,
        }
        fault = self.emulator.take_fault("arm.lro", kind="job")
        # {"route": "arm.lro", "no_effect": true}: the operation runs and succeeds, and nothing changes
        unchanged = self.emulator.take_fault("arm.lro")
        threading.Thread(
            target=self._provision,
            daemon=True,
            args=(service, properties, replace, str(operation), fault.fail if fault else None),
            kwargs={"no_effect": bool(unchanged and unchanged.no_effect)},
        ).start()
        with self.emulator.lock:
            service.previous_state = service.definition["properties"].get("provisioningState", "Succeeded")
            service.definition["properties"]["provisioningState"] = "Provisioning"
        return {"Azure-AsyncOperation": op_url, "Azure-AsyncOperationPercentComplete": "0"}

    def _provision(
        self,
        service: ArmWebService,
        properties: dict,
        replace: bool,
        operation: str,
        injected_failure: str | None,
        no_effect: bool = False,
    ) -> None:
        time.sleep(float(self.emulator.config.get("lro_seconds", 0.5)))
        op = self.operations[operation]
        if no_effect:
            with self.emulator.lock:
                service.definition["properties"]["provisioningState"] = service.previous_state
            op.update(status="Succeeded", endTime=_now_iso(), percentComplete=1.0)
            return
        try:
            if injected_failure:
                raise HttpError(500, "InternalError", injected_failure)
            keys = _ci(properties, "keys")
            current = service.definition["properties"]
            merged = dict(properties) if replace else _merge(current, properties)
            merged = _without_secrets(merged)
            for name in ("createdOn", "swaggerLocation"):  # read-only: a PUT cannot change or drop them
                merged = {k: v for k, v in merged.items() if k.lower() != name.lower()}
                if _ci(current, name) is not None:
                    merged[name] = _ci(current, name)
            model = self._load_assets(service, merged, _ci(current, "assets") or {})
        except HttpError as exc:
            error = exc.body["error"]
            op.update(
                status="Failed",
                endTime=_now_iso(),
                percentComplete=1.0,
                error={
                    "code": error["code"],
                    "message": " ".join([error["message"], *(d["message"] for d in error.get("details", []))]),
                },
            )
            service.definition["properties"]["provisioningState"] = "Failed"
            return
        with self.emulator.lock:
            merged.update(provisioningState="Succeeded", modifiedOn=_now_iso())
            service.definition["properties"] = merged
            if isinstance(keys, dict):
                service.keys.update({k.lower(): v for k, v in keys.items()})
            if model is not None:
                service.model = model
        op.update(status="Succeeded", endTime=_now_iso(), percentComplete=1.0)

    def _load_assets(self, service: ArmWebService, properties: dict, current: dict) -> dict | None:
        """Load each trained-model (``Resource``) asset that changed from the web service's storage
        account; an asset left as it was is already loaded (the seed's points at a foreign account)."""
        model = None

        def uri_of(asset: object) -> str:
            return _ci(_ci(asset, "locationInfo") or {}, "uri") or "" if isinstance(asset, dict) else ""

        for key, asset in (_ci(properties, "assets") or {}).items():
            if str(_ci(asset, "type")).lower() != "resource":
                continue
            uri = uri_of(asset)
            if uri and uri == uri_of(_ci(current, key)):
                continue
            model = _load(self._blob_in_service_storage(service, uri))
        return model

    def _blob_in_service_storage(self, service: ArmWebService, uri: str):
        account = BlobServiceClient.from_connection_string(service.storage_connection_string)
        base = account.url.rstrip("/") + "/"
        plain = uri.split("?", 1)[0]
        if not plain.startswith(base):
            raise HttpError(
                400,
                "BadRequest",
                "The request is invalid.",
                [
                    (
                        "ResourceDownload",
                        f"The trained model {plain} is not in the web service's storage account "
                        f"{account.account_name}.",
                    )
                ],
            )
        container, _, blob = unquote(plain[len(base) :]).partition("/")
        return account.get_blob_client(container, blob)

    def operation(self, request: Request) -> Response:
        self.identity.require(request, ARM_RESOURCE)
        op = self.operations.get(request.params["op"])
        if op is None:
            raise HttpError(404, "NotFound", "The specified resource was not found.")
        return Response(200, dict(op))

    def execute(self, request: Request) -> Response:
        service = next((s for s in self.services.values() if s.service_id == request.params["svc"].lower()), None)
        if service is None:
            raise HttpError(404, "NotFound", "Resource not found.", [("WebServiceNotFound", "Service not found.")])
        _check_key(request, tuple(service.keys.values()), "ScoreRequestUnauthorized")
        return score_request(request, service.model or initial_model())


def _without_secrets(properties: dict) -> dict:
    """A definition as stored and returned: no ``keys``, and the storage account by name only (a GET
    "does not return storage credentials or keys")."""
    cleaned = {k: v for k, v in properties.items() if k.lower() != "keys"}
    for key in [k for k in cleaned if k.lower() == "storageaccount"]:
        if isinstance(cleaned[key], dict):
            cleaned[key] = {k: v for k, v in cleaned[key].items() if k.lower() != "key"}
    return cleaned


def _merge(current: dict, patch: dict) -> dict:
    """PATCH semantics: the given properties replace the current ones (keys matched case-insensitively)."""
    merged = copy.deepcopy(current)
    for key, value in patch.items():
        for existing in [k for k in merged if k.lower() == key.lower()]:
            del merged[existing]
        merged[key] = copy.deepcopy(value)
    return merged


# --- managed identity ----------------------------------------------------------------------------


class Identity:
    """The App Service managed-identity endpoint (``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``) that
    ``azure-identity`` speaks, so production credential code runs unchanged against the emulator."""

    def __init__(self, emulator: Emulator, header_secret: str) -> None:
        self.header_secret = header_secret
        self.tokens: dict[str, tuple[str, float]] = {}
        emulator.route("GET", r"/msi/token", "identity.token", self.token)
        # Every token issued, for tests that look for them where they must never be.
        emulator.admin("GET", "tokens", lambda r: Response(200, sorted(self.tokens)))

    def token(self, request: Request) -> Response:
        if not hmac.compare_digest(request.headers.get("X-IDENTITY-HEADER") or "", self.header_secret):
            raise HttpError(401, "Unauthorized", "The X-IDENTITY-HEADER is missing or wrong.")
        if request.arg("api-version") != "2019-08-01" or not request.arg("resource"):
            raise HttpError(400, "BadRequest", "api-version=2019-08-01 and resource are required.")
        resource = request.arg("resource").rstrip("/")
        token = secrets.token_urlsafe(32)
        expires = time.time() + 3600
        self.tokens[token] = (resource, expires)
        return Response(
            200,
            {
                "access_token": token,
                "expires_on": str(int(expires)),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": "00000000-0000-0000-0000-000000000001",
            },
        )

    def require(self, request: Request, resource: str) -> None:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HttpError(
                401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."
            )
        issued = self.tokens.get(token.strip())
        if issued is None or issued[1] < time.time() or issued[0] != resource.rstrip("/"):
            raise HttpError(401, "InvalidAuthenticationToken", "The access token is invalid or has expired.")


def seed_arm(
    services: ArmWebServices,
    *,
    subscription: str,
    resource_group: str,
    name: str,
    storage_connection_string: str,
    api_key: str,
) -> ArmWebService:
    """A New web service defined by the public example definition (plus its trained-model asset)."""
    definition = json.loads(SEED.read_text())["webService"]
    definition["properties"]["storageAccount"] = {
        "name": BlobServiceClient.from_connection_string(storage_connection_string).account_name
    }
    definition["properties"]["provisioningState"] = "Succeeded"
    definition.pop("id", None)
    service = ArmWebService(
        subscription,
        resource_group,
        name,
        definition.pop("location", "West US"),
        definition,
        storage_connection_string,
        {"primary": api_key, "secondary": secrets.token_urlsafe(24)},
    )
    definition["properties"]["swaggerLocation"] = (
        f"{services.emulator.base_url}/subscriptions/{subscription}/services/{service.service_id}/swagger.json"
    )
    return services.add(service)
