"""Azure Machine Learning (v2, ``Microsoft.MachineLearningServices``): what the retraining loop uses.

* Workspace GET (``mlFlowTrackingUri``, ``discoveryUrl``), datastore GET (a container in Azurite).
* Jobs: PUT (a ``Command`` job; synchronous 201/200, a PUT of the same name and body is the same
  job), GET, cancel (202 + ``Location``). Status ``NotStarted → Queued → Running → Finalizing →
  Completed``; a job really trains on its input (read through the datastore), writes an MLflow model
  folder (``MLmodel`` + JSON weights, never pickle) to its output, and logs its evaluation on its
  MLflow run — the job's own for a command job, a child run for a batch-endpoint pipeline job.
* Batch endpoints: GET (``scoringUri``) and invoke (``https://ml.azure.com`` token): a pipeline job.
* MLflow REST: ``runs/get``, ``runs/search`` (the ``tags.mlflow.parentRunId`` filter), ``metrics/get-history``.
* Model versions: PUT (``modelUri`` must name a completed job's output), GET, list.

Strict where the reference is (``../shared/reference/azure-ml-v2-protocol.md``): api-version required,
each route's token audience checked (ARM for control plane and MLflow, ``ml.azure.com`` for batch
invocation), camelCase bodies, ARM error bodies (``ResourceNotFound``, ``UserError``). Faults per
route as for classic (``v2.jobs.put``, ``v2.jobs.get``, ``v2.job`` with ``fail``, ...).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from azure.storage.blob import BlobServiceClient

from emulator import training
from emulator.server import Emulator, HttpError, Request, Response

API_VERSIONS = ("2025-12-01", "2026-03-01", "2026-05-01", "2026-07-01", "2026-09-01")
ARM_AUDIENCE, AML_AUDIENCE = "https://management.azure.com", "https://ml.azure.com"
WS = (
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)"
)
JOB_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,254}$")
# The statuses a job moves through, and the share of the job's time spent in each.
LIFECYCLE = (("NotStarted", 0.1), ("Queued", 0.2), ("Running", 0.5), ("Finalizing", 0.2))
DATASTORE_URI = re.compile(r"^azureml://datastores/(?P<ds>[^/]+)/paths/(?P<path>.+)$")
JOB_OUTPUT_URI = re.compile(r"^azureml://jobs/(?P<job>[^/]+)/outputs/(?P<output>[^/]+)/paths/(?P<path>.*)$")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def user_error(message: str, status: int = 400, code: str = "UserError") -> HttpError:
    return HttpError(status, code, message)


def not_found(what: str) -> HttpError:
    return HttpError(404, "ResourceNotFound", f"{what} could not be found.")


@dataclass
class V2Job:
    name: str
    workspace: Workspace
    body: dict  # the PUT body's properties, as stored
    kind: str  # "command" or "pipeline" (a batch-endpoint invocation)
    status: str = "NotStarted"
    error: dict | None = None
    created: str = field(default_factory=now_iso)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    child_run: str | None = None  # the pipeline's training step's MLflow run

    def resource(self) -> dict:
        properties = {**copy.deepcopy(self.body), "status": self.status}
        if self.error:
            properties["error"] = self.error  # not in the spec's job body; kept for diagnosis
        return {
            "id": f"{self.workspace.resource_id}/jobs/{self.name}",
            "name": self.name,
            "type": "Microsoft.MachineLearningServices/workspaces/jobs",
            "properties": properties,
            "systemData": {"createdAt": self.created, "createdBy": "autopilot", "createdByType": "Application"},
        }


@dataclass
class MlflowRun:
    run_id: str
    experiment_id: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)  # every logged value, in order
    status: str = "SCHEDULED"
    start_time: int = field(default_factory=lambda: int(time.time() * 1000))

    def document(self) -> dict:
        latest: dict[str, dict] = {}
        for metric in self.metrics:
            latest[metric["key"]] = metric
        return {
            "info": {
                "run_id": self.run_id,
                "run_uuid": self.run_id,
                "experiment_id": self.experiment_id,
                "status": self.status,
                "start_time": self.start_time,
                "artifact_uri": f"azureml://experiments/{self.experiment_id}/runs/{self.run_id}/artifacts",
                "lifecycle_stage": "active",
            },
            "data": {
                "metrics": list(latest.values()),
                "params": [],
                "tags": [{"key": k, "value": v} for k, v in self.tags.items()],
            },
        }


@dataclass
class Workspace:
    subscription: str
    resource_group: str
    name: str
    location: str = "westus"
    datastores: dict[str, str] = field(default_factory=dict)  # name -> container in the emulator's storage
    batch_endpoints: dict[str, dict] = field(default_factory=dict)  # name -> {"deployment", "input", "output"}
    jobs: dict[str, V2Job] = field(default_factory=dict)
    runs: dict[str, MlflowRun] = field(default_factory=dict)
    experiments: dict[str, str] = field(default_factory=dict)  # name -> id
    models: dict[str, dict[str, dict]] = field(default_factory=dict)  # name -> version -> resource
    online_endpoints: dict[str, Any] = field(default_factory=dict)  # lower-cased name -> emulator.online endpoint

    @property
    def resource_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{self.name}"
        )

    def experiment(self, name: str) -> str:
        return self.experiments.setdefault(name, str(len(self.experiments) + 1))


class AzureMLv2:
    """The v2 workspace services, served by the same emulator process as classic."""

    def __init__(self, emulator: Emulator, identity) -> None:
        self.emulator, self.identity = emulator, identity
        self.workspaces: dict[str, Workspace] = {}
        self.storage_connection_string: str | None = None
        self.cancels: dict[str, V2Job] = {}  # operation id -> the job being canceled
        route = emulator.route
        route("GET", WS, "v2.workspace", self.get_workspace)
        route("GET", WS + r"/datastores/(?P<ds>[^/]+)", "v2.datastore", self.get_datastore)
        route("PUT", WS + r"/jobs/(?P<job>[^/]+)", "v2.jobs.put", self.put_job)
        route("GET", WS + r"/jobs/(?P<job>[^/]+)", "v2.jobs.get", self.get_job)
        route("POST", WS + r"/jobs/(?P<job>[^/]+)/cancel", "v2.jobs.cancel", self.cancel_job)
        route("GET", WS + r"/operations/cancel/(?P<op>[^/]+)", "v2.jobs.cancel_status", self.cancel_status)
        route("GET", WS + r"/batchEndpoints/(?P<ep>[^/]+)", "v2.batch.get", self.get_batch_endpoint)
        route("POST", r"/batch" + WS + r"/batchEndpoints/(?P<ep>[^/]+)/jobs", "v2.batch.invoke", self.invoke)
        route("PUT", WS + r"/models/(?P<model>[^/]+)/versions/(?P<version>[^/]+)", "v2.models.put", self.put_model)
        route("GET", WS + r"/models/(?P<model>[^/]+)/versions/(?P<version>[^/]+)", "v2.models.get", self.get_model)
        route("GET", WS + r"/models/(?P<model>[^/]+)/versions", "v2.models.list", self.list_models)
        mlflow = r"/mlflow/v1\.0" + WS + r"/api/2\.0/mlflow"
        route("GET", mlflow + r"/runs/get", "v2.mlflow.runs.get", self.mlflow_get)
        route("POST", mlflow + r"/runs/search", "v2.mlflow.runs.search", self.mlflow_search)
        route("GET", mlflow + r"/metrics/get-history", "v2.mlflow.history", self.mlflow_history)
        emulator.admin("POST", "v2/datastores", self._add_datastore)
        emulator.admin("GET", "v2/jobs", lambda r: Response(200, [self._summary(j) for j in self._all_jobs()]))
        emulator.admin("GET", "v2/models", self._all_models)
        from emulator.online import OnlineEndpoints

        self.online = OnlineEndpoints(self)

    # --- set-up ----------------------------------------------------------------------------------

    def add(self, workspace: Workspace) -> Workspace:
        self.workspaces[workspace.resource_id.lower()] = workspace
        return workspace

    def _add_datastore(self, request: Request) -> Response:
        spec = request.json() or {}
        workspace = next(iter(self.workspaces.values()))
        workspace.datastores[str(spec["name"])] = str(spec["container"])
        return Response(200, {"name": spec["name"], "container": spec["container"]})

    def _all_jobs(self) -> list[V2Job]:
        return [j for w in self.workspaces.values() for j in w.jobs.values()]

    def _all_models(self, request: Request) -> Response:
        return Response(200, [v for w in self.workspaces.values() for m in w.models.values() for v in m.values()])

    @staticmethod
    def _summary(job: V2Job) -> dict:
        return {"name": job.name, "kind": job.kind, "status": job.status, "properties": job.body}

    # --- common checks ---------------------------------------------------------------------------

    def _workspace(self, request: Request, audience: str = ARM_AUDIENCE) -> Workspace:
        self.identity.require(request, audience)
        version = request.arg("api-version")
        if version is None:
            raise HttpError(400, "MissingApiVersionParameter", "The api-version query parameter is required.")
        if version not in API_VERSIONS:
            raise HttpError(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{version}' is invalid. The supported versions are '{', '.join(API_VERSIONS)}'.",
            )
        workspace = self._lookup(request)
        if workspace is None:
            raise not_found(f"Workspace {request.params['ws']}")
        return workspace

    def _lookup(self, request: Request) -> Workspace | None:
        """The workspace the request's path names (``sub``, ``rg``, ``ws``), matched case-insensitively."""
        p = request.params
        key = (
            f"/subscriptions/{p['sub']}/resourceGroups/{p['rg']}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{p['ws']}"
        ).lower()
        return self.workspaces.get(key)

    @staticmethod
    def _body(request: Request) -> dict:
        try:
            body = request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
            raise user_error("The request body must be a JSON object with a 'properties' object.")
        return body

    # --- workspace and datastores ----------------------------------------------------------------

    def get_workspace(self, request: Request) -> Response:
        w = self._workspace(request)
        host = self.emulator.base_url.split("://", 1)[1]
        return Response(
            200,
            {
                "id": w.resource_id,
                "name": w.name,
                "type": "Microsoft.MachineLearningServices/workspaces",
                "location": w.location,
                "properties": {
                    "friendlyName": w.name,
                    "discoveryUrl": f"{self.emulator.base_url}/discovery",
                    "mlFlowTrackingUri": f"azureml://{host}/mlflow/v1.0{w.resource_id}",
                    "provisioningState": "Succeeded",
                },
            },
        )

    def get_datastore(self, request: Request) -> Response:
        w = self._workspace(request)
        name = request.params["ds"]
        if name not in w.datastores:
            raise not_found(f"Datastore {name}")
        account = self._account()
        return Response(
            200,
            {
                "id": f"{w.resource_id}/datastores/{name}",
                "name": name,
                "type": "Microsoft.MachineLearningServices/workspaces/datastores",
                "properties": {
                    "datastoreType": "AzureBlob",
                    "accountName": account.account_name,
                    "containerName": w.datastores[name],
                    "endpoint": "core.windows.net",
                    "protocol": "https",
                    "credentials": {"credentialsType": "None"},
                    "serviceDataAccessAuthIdentity": "WorkspaceSystemAssignedIdentity",
                    "isDefault": False,
                },
            },
        )

    def _account(self) -> BlobServiceClient:
        if not self.storage_connection_string:
            raise HttpError(500, "InternalError", "the emulator has no storage account (--storage-connection-string)")
        return BlobServiceClient.from_connection_string(self.storage_connection_string, retry_total=1)

    # --- jobs ------------------------------------------------------------------------------------

    def put_job(self, request: Request) -> Response:
        w = self._workspace(request)
        name = request.params["job"]
        if not JOB_NAME.fullmatch(name):
            raise user_error(f"Job name {name!r} is not valid: letters, digits, '-' and '_', up to 255.")
        properties = self._body(request)["properties"]
        if properties.get("jobType") != "Command":
            raise user_error("Only jobType 'Command' is supported by this emulator (pipelines: batch endpoints).")
        for required in ("command", "environmentId"):
            if not isinstance(properties.get(required), str) or not properties[required]:
                raise user_error(f"properties.{required} is required for a Command job.")
        self._check_inputs(w, properties.get("inputs") or {})
        outputs = properties.get("outputs") or {}
        if not any(isinstance(o, dict) and o.get("jobOutputType") == "mlflow_model" for o in outputs.values()):
            raise user_error("The job needs an output of jobOutputType 'mlflow_model' to hold the trained model.")
        with self.emulator.lock:
            existing = w.jobs.get(name)
            if existing is not None:
                stored = {k: v for k, v in existing.body.items() if k != "tags"}
                given = {k: v for k, v in properties.items() if k not in ("tags", "status")}
                if stored != given:
                    raise user_error(f"Job {name} already exists with different properties; only tags can change.")
                existing.body["tags"] = properties.get("tags") or {}  # "Tags ... will replace Tags"
                return Response(200, existing.resource())
            body = {k: v for k, v in properties.items() if k != "status"}
            body.setdefault("experimentName", "Default")
            job = V2Job(name, w, body, "command")
            w.jobs[name] = job
            w.runs[name] = MlflowRun(name, w.experiment(body["experimentName"]), {"mlflow.runName": name})
        self._run_later(job)
        return Response(201, job.resource())

    def _check_inputs(self, w: Workspace, inputs: dict) -> None:
        for input_name, spec in inputs.items():
            if not isinstance(spec, dict) or "jobInputType" not in spec:
                raise user_error(f"inputs.{input_name} needs a jobInputType.")
            if spec["jobInputType"] in ("uri_file", "uri_folder"):
                match = DATASTORE_URI.fullmatch(str(spec.get("uri") or ""))
                if match is None:
                    raise user_error(f"inputs.{input_name}.uri must be azureml://datastores/<name>/paths/<path>.")
                if match["ds"] not in w.datastores:
                    raise not_found(f"Datastore {match['ds']}")

    def get_job(self, request: Request) -> Response:
        w = self._workspace(request)
        job = w.jobs.get(request.params["job"])
        if job is None:
            raise not_found(f"Job {request.params['job']}")
        return Response(200, job.resource())

    def cancel_job(self, request: Request) -> Response:
        w = self._workspace(request)
        job = w.jobs.get(request.params["job"])
        if job is None:
            raise not_found(f"Job {request.params['job']}")
        operation = uuid.uuid4().hex
        with self.emulator.lock:
            if job.status not in ("Completed", "Failed", "Canceled"):
                job.status = "CancelRequested"
                job.cancel_requested.set()
            self.cancels[operation] = job
        location = f"{self.emulator.base_url}{w.resource_id}/operations/cancel/{operation}?api-version=2025-12-01"
        return Response(202, None, {"Location": location, "Retry-After": "1"})

    def cancel_status(self, request: Request) -> Response:
        self._workspace(request)
        job = self.cancels.get(request.params["op"])
        if job is None:
            raise not_found("Operation")
        return Response(200 if job.status in ("Completed", "Failed", "Canceled") else 202)

    def _run_later(self, job: V2Job) -> None:
        fault = self.emulator.take_fault("v2.job", kind="job", path=job.name)
        threading.Thread(target=self._run, args=(job, fault.fail if fault else None), daemon=True).start()

    def _run(self, job: V2Job, injected_failure: str | None) -> None:
        seconds = float(self.emulator.config.get("job_seconds", 1.0))
        for status, share in LIFECYCLE:
            with self.emulator.lock:
                if job.cancel_requested.is_set():
                    break
                job.status = status
                self._mlflow_status(job, "RUNNING" if status in ("Running", "Finalizing") else "SCHEDULED")
            if job.cancel_requested.wait(seconds * share):
                break
            if status == "Running":
                try:
                    if injected_failure:
                        raise training.ModuleError(injected_failure)
                    self._train(job)
                except training.ModuleError as exc:
                    return self._end(job, "Failed", {"code": "UserError", "message": str(exc)})
                except Exception as exc:
                    return self._end(job, "Failed", {"code": "SystemError", "message": f"{type(exc).__name__}: {exc}"})
        if job.cancel_requested.is_set():
            return self._end(job, "Canceled", None)
        self._end(job, "Completed", None)

    def _end(self, job: V2Job, status: str, error: dict | None) -> None:
        with self.emulator.lock:
            job.status, job.error = status, error
            self._mlflow_status(job, {"Completed": "FINISHED", "Failed": "FAILED", "Canceled": "KILLED"}[status])

    def _mlflow_status(self, job: V2Job, status: str) -> None:
        for run_id in filter(None, (job.name, job.child_run)):
            run = job.workspace.runs.get(run_id)
            if run is not None:
                run.status = status

    def _train(self, job: V2Job) -> None:
        """Read the input through its datastore, fit, write the MLflow model, log the evaluation."""
        w = job.workspace
        inputs = job.body.get("inputs") or {}
        uri = next((i.get("uri") for i in inputs.values() if i.get("jobInputType") in ("uri_file", "uri_folder")), "")
        match = DATASTORE_URI.fullmatch(str(uri))
        if match is None or match["ds"] not in w.datastores:
            raise training.ModuleError(f"The input {uri!r} is not a path on a datastore of this workspace.")
        account = self._account()
        blob = account.get_blob_client(w.datastores[match["ds"]], match["path"])
        try:
            text = blob.download_blob().readall().decode("utf-8-sig")
        except Exception as exc:  # any storage failure is the job's failure
            raise training.ModuleError(f"Could not read input {uri}: {type(exc).__name__}") from None
        model, metrics = training.train(text)
        output = next(n for n, o in job.body["outputs"].items() if o.get("jobOutputType") == "mlflow_model")
        container = "azureml"
        with contextlib.suppress(Exception):
            account.create_container(container)
        folder = f"ExperimentRun/dcid.{job.name}/outputs/{output}"
        mlmodel = (
            "artifact_path: model\nflavors:\n  emulator_logistic_regression:\n    data: model.json\n"
            f"    format: {training.MODEL_FORMAT}\nmlflow_version: 2.12.0\nmodel_uuid: {uuid.uuid4().hex}\n"
            f"run_id: {job.name}\nutc_time_created: '{now_iso()}'\n"
        )
        account.get_blob_client(container, f"{folder}/MLmodel").upload_blob(mlmodel.encode(), overwrite=True)
        account.get_blob_client(container, f"{folder}/model.json").upload_blob(
            training.model_bytes(model), overwrite=True
        )
        job.body["outputs"][output]["uri"] = f"azureml://datastores/workspaceartifactstore/paths/{folder}/"
        step = int(time.time() * 1000)
        logged = [
            {"key": key, "value": value, "timestamp": step, "step": 0}
            for key, value in metrics.items()
            if value == value  # NaN is not logged
        ]
        if not job.child_run:
            w.runs[job.name].metrics.extend(logged)
            return
        # A pipeline's steps are child runs; the training step logs the evaluation (tests vary how many do).
        for n in range(int(self.emulator.config.get("v2_metric_children", 1))):
            run_id = job.child_run if n == 0 else f"{job.child_run}_{n}"
            child = w.runs.setdefault(
                run_id, MlflowRun(run_id, w.runs[job.name].experiment_id, {"mlflow.parentRunId": job.name})
            )
            child.metrics.extend(logged)

    # --- batch endpoints -------------------------------------------------------------------------

    def get_batch_endpoint(self, request: Request) -> Response:
        w = self._workspace(request)
        name = request.params["ep"]
        endpoint = w.batch_endpoints.get(name)
        if endpoint is None:
            raise not_found(f"Batch endpoint {name}")
        return Response(
            200,
            {
                "id": f"{w.resource_id}/batchEndpoints/{name}",
                "name": name,
                "type": "Microsoft.MachineLearningServices/workspaces/batchEndpoints",
                "location": w.location,
                "properties": {
                    "authMode": "AADToken",
                    "defaults": {"deploymentName": endpoint["deployment"]},
                    "scoringUri": f"{self.emulator.base_url}/batch{w.resource_id}/batchEndpoints/{name}/jobs",
                    "provisioningState": "Succeeded",
                },
            },
        )

    def invoke(self, request: Request) -> Response:
        """A batch-endpoint invocation (data plane; keys in either casing, as the service accepts)."""
        self.identity.require(request, AML_AUDIENCE)
        p = request.params
        w = self._lookup(request)
        endpoint = w.batch_endpoints.get(p["ep"]) if w else None
        if endpoint is None:
            raise not_found(f"Batch endpoint {p['ep']}")
        deployment = request.headers.get("azureml-model-deployment") or endpoint["deployment"]
        if deployment != endpoint["deployment"]:
            raise not_found(f"Deployment {deployment}")
        properties = self._body(request)["properties"]
        inputs = _ci(properties, "inputData")
        if not isinstance(inputs, dict) or set(inputs) != {endpoint["input"]}:
            raise user_error(f"properties.InputData must have exactly the pipeline's input {endpoint['input']!r}.")
        spec = inputs[endpoint["input"]]
        kind, uri = _ci(spec, "jobInputType"), _ci(spec, "uri")
        if kind not in ("UriFile", "UriFolder") or not isinstance(uri, str):
            raise user_error("An input needs JobInputType UriFile or UriFolder and a Uri.")
        experiment = _ci(_ci(properties, "properties") or {}, "experimentName") or p["ep"]
        name = f"batchjob-{uuid.uuid4()}"
        body = {
            "jobType": "Pipeline",
            "experimentName": experiment,
            "inputs": {endpoint["input"]: {"jobInputType": "uri_file", "uri": uri}},
            "outputs": {endpoint["output"]: {"jobOutputType": "mlflow_model"}},
            "tags": dict(_ci(properties, "tags") or {}),
        }
        self._check_inputs(w, body["inputs"])
        with self.emulator.lock:
            job = V2Job(name, w, body, "pipeline", child_run=f"{name}_train")
            w.jobs[name] = job
            experiment_id = w.experiment(experiment)
            w.runs[name] = MlflowRun(name, experiment_id, {"mlflow.runName": name})
            w.runs[job.child_run] = MlflowRun(
                job.child_run, experiment_id, {"mlflow.parentRunId": name, "mlflow.runName": "train"}
            )
        self._run_later(job)
        return Response(
            200,
            {
                "id": f"{w.resource_id}/jobs/{name}",
                "name": name,
                "type": "Microsoft.MachineLearningServices/workspaces/jobs",
                "properties": {"status": job.status, "inputData": inputs, "jobType": "Pipeline"},
            },
        )

    # --- MLflow ----------------------------------------------------------------------------------

    def _mlflow_workspace(self, request: Request) -> Workspace:
        self.identity.require(request, ARM_AUDIENCE)
        workspace = self._lookup(request)
        if workspace is None:
            raise _mlflow_error(404, "RESOURCE_DOES_NOT_EXIST", "Workspace not found.")
        return workspace

    def mlflow_get(self, request: Request) -> Response:
        w = self._mlflow_workspace(request)
        run = w.runs.get(request.arg("run_id") or "")
        if run is None:
            raise _mlflow_error(404, "RESOURCE_DOES_NOT_EXIST", f"Run '{request.arg('run_id')}' not found.")
        return Response(200, {"run": run.document()})

    def mlflow_search(self, request: Request) -> Response:
        w = self._mlflow_workspace(request)
        try:
            body = request.json() or {}
        except ValueError:
            body = {}
        match = re.fullmatch(r"\s*tags\.mlflow\.parentRunId\s*=\s*'([^']*)'\s*", str(body.get("filter") or ""))
        if match is None:
            raise _mlflow_error(
                400, "INVALID_PARAMETER_VALUE", "This emulator filters by tags.mlflow.parentRunId only."
            )
        experiments = {str(e) for e in body.get("experiment_ids") or []}
        runs = [
            r.document()
            for r in w.runs.values()
            if r.tags.get("mlflow.parentRunId") == match[1] and (not experiments or r.experiment_id in experiments)
        ]
        return Response(200, {"runs": runs} if runs else {})

    def mlflow_history(self, request: Request) -> Response:
        w = self._mlflow_workspace(request)
        run = w.runs.get(request.arg("run_id") or "")
        if run is None:
            raise _mlflow_error(404, "RESOURCE_DOES_NOT_EXIST", f"Run '{request.arg('run_id')}' not found.")
        key = request.arg("metric_key")
        return Response(200, {"metrics": [m for m in run.metrics if m["key"] == key]})

    # --- models ----------------------------------------------------------------------------------

    def put_model(self, request: Request) -> Response:
        w = self._workspace(request)
        name, version = request.params["model"], request.params["version"]
        properties = self._body(request)["properties"]
        uri = properties.get("modelUri")
        match = JOB_OUTPUT_URI.fullmatch(str(uri or ""))
        if match is None:
            raise user_error("properties.modelUri must be azureml://jobs/<job>/outputs/<output>/paths/<path>.")
        job = w.jobs.get(match["job"])
        if job is None or job.status != "Completed" or match["output"] not in (job.body.get("outputs") or {}):
            raise user_error(f"modelUri {uri} does not name an output of a completed job.")
        with self.emulator.lock:
            versions = w.models.setdefault(name, {})
            existing = versions.get(version)
            stored = {
                **{k: v for k, v in properties.items() if k != "provisioningState"},
                "provisioningState": "Succeeded",
            }
            if existing is not None and existing["properties"]["modelUri"] != uri:
                raise HttpError(
                    409,
                    "Conflict",
                    f"Model version {name}:{version} exists with a different modelUri; versions are immutable.",
                )
            resource = {
                "id": f"{w.resource_id}/models/{name}/versions/{version}",
                "name": version,
                "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
                "properties": stored,
                "systemData": {"createdAt": now_iso(), "createdBy": "autopilot", "createdByType": "Application"},
            }
            versions[version] = resource
        return Response(200 if existing else 201, resource)

    def get_model(self, request: Request) -> Response:
        w = self._workspace(request)
        version = (w.models.get(request.params["model"]) or {}).get(request.params["version"])
        if version is None:
            raise not_found(f"Model {request.params['model']}:{request.params['version']}")
        return Response(200, version)

    def list_models(self, request: Request) -> Response:
        w = self._workspace(request)
        return Response(200, {"value": list((w.models.get(request.params["model"]) or {}).values())})


def _ci(mapping: Any, key: str) -> Any:
    """A key looked up in any casing (the batch invocation accepts ``InputData`` and ``inputData``)."""
    if not isinstance(mapping, dict):
        return None
    return next((v for k, v in mapping.items() if isinstance(k, str) and k.lower() == key.lower()), None)


def _mlflow_error(status: int, code: str, message: str) -> HttpError:
    error = HttpError(status, code, message)
    error.body = {"error_code": code, "message": message}  # MLflow's own error shape, not ARM's
    return error


def seed(
    services: AzureMLv2, *, subscription: str, resource_group: str, storage_connection_string: str | None
) -> Workspace:
    """One workspace with a datastore on the app's default training container and one batch endpoint
    whose default deployment is a training pipeline (input ``training_data``, output ``model``)."""
    services.workspaces.clear()
    services.cancels.clear()
    services.storage_connection_string = storage_connection_string
    workspace = services.add(
        Workspace(
            subscription,
            resource_group,
            "autopilot-ws",
            datastores={"autopilot_training": "training-data"},
            batch_endpoints={
                "retrain-census": {"deployment": "train-pipeline", "input": "training_data", "output": "model"}
            },
        )
    )
    from emulator import online

    online.seed(services.online, workspace)
    return workspace
