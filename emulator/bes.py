"""The Batch Execution Service (api-version 2.0) of a classic *training* web service.

Strict where the protocol reference is silent (see ``docs/protocol.md``): PascalCase keys only,
``api-version=2.0`` required, a local input blob must exist at submit. Without ``Outputs`` (absent or
null: they are optional) the outputs go to the workspace's default storage under random names.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from emulator import training
from emulator.blobio import BlobReference, ReferenceError_, parse_reference
from emulator.server import Emulator, HttpError, Request, Response

DATASET_EXTENSIONS = (".csv", ".tsv", ".arff")
MODEL_EXTENSIONS = (".ilearner",)
LEGACY_CODES = {"NotStarted": 0, "Running": 1, "Failed": 2, "Cancelled": 3, "Finished": 4}
_BAD_VERSION = "The api-version is missing or not supported; use api-version=2.0."


@dataclass
class TrainingService:
    """A training experiment published as a web service: one input, a model and an evaluation output."""

    workspace: str
    service: str
    api_keys: tuple[str, ...]
    inputs: tuple[str, ...] = ("input1",)
    outputs: dict[str, str] = field(default_factory=lambda: {"output1": "model", "output2": "dataset"})
    label_column: str = "label"
    parameters: dict[str, Any] = field(default_factory=lambda: {"Random seed": 42, "Test fraction": 0.25})
    required_parameters: tuple[str, ...] = ()

    def kind_of(self, output: str) -> str:
        return self.outputs[output]


@dataclass
class Job:
    id: str
    service: TrainingService
    inputs: dict[str, BlobReference]
    outputs: dict[str, BlobReference]
    parameters: dict[str, Any]
    request: dict
    status: str = "NotStarted"
    details: str | None = None
    created: float = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).timestamp())
    started: float | None = None
    ended: float | None = None
    metrics: dict[str, float] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def summary(self) -> dict:
        return {
            "id": self.id,
            "workspace": self.service.workspace,
            "service": self.service.service,
            "status": self.status,
            "details": self.details,
            "request": self.request,
            "metrics": self.metrics,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
        }


class BatchExecutionService:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.services: dict[tuple[str, str], TrainingService] = {}
        self.jobs: dict[str, Job] = {}
        self.workspace_storage: str | None = None  # connection string of the workspace's default storage
        jobs = r"/workspaces/(?P<ws>[^/]+)/services/(?P<svc>[^/]+)/jobs"
        # New (ARM) web services: same operations under /subscriptions/{sub}/services/{id} (inferred).
        arm_jobs = r"/subscriptions/(?P<ws>[^/]+)/services/(?P<svc>[^/]+)/jobs"
        for prefix in (jobs, arm_jobs):
            emulator.route("POST", prefix, "bes.submit", self.submit)
            emulator.route("POST", prefix + r"/(?P<job>[^/]+)/start", "bes.start", self.start)
            emulator.route("GET", prefix + r"/(?P<job>[^/]+)", "bes.status", self.status)
            emulator.route("DELETE", prefix + r"/(?P<job>[^/]+)", "bes.cancel", self.cancel)
        emulator.admin("GET", "jobs", lambda r: Response(200, [j.summary() for j in self.jobs.values()]))
        emulator.admin("POST", "services", self._register)
        emulator.on_reset(self._reset)

    def add_service(self, service: TrainingService) -> TrainingService:
        self.services[(service.workspace.lower(), service.service.lower())] = service
        return service

    def _register(self, request: Request) -> Response:
        spec = dict(request.json() or {})
        try:
            keys = spec.pop("api_keys", None) or (spec.pop("api_key"),)
            service = self.add_service(TrainingService(api_keys=tuple(keys), **spec))
        except (KeyError, TypeError) as exc:
            raise HttpError(400, "BadArgument", f"bad service spec: {exc}") from None
        return Response(200, {"workspace": service.workspace, "service": service.service})

    def _reset(self) -> None:
        for job in self.jobs.values():
            job.cancelled.set()
        self.jobs.clear()

    # --- common checks --------------------------------------------------------------------------

    def _service(self, request: Request) -> TrainingService:
        if request.arg("api-version") != "2.0":
            raise HttpError(400, "BadArgument", "Invalid argument provided.", [("BadVersionCall", _BAD_VERSION)])
        service = self.services.get((request.params["ws"].lower(), request.params["svc"].lower()))
        if service is None:
            raise HttpError(
                404, "NotFound", "Resource not found.", [("WebServiceNotFound", "The web service was not found.")]
            )
        scheme, _, key = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(key.strip(), k) for k in service.api_keys):
            raise HttpError(
                401, "Unauthorized", "Unauthorized", [("ScoreRequestUnauthorized", "Invalid credentials provided.")]
            )
        return service

    def _job(self, request: Request, service: TrainingService) -> Job:
        job = self.jobs.get(request.params["job"].lower())
        if job is None or job.service is not service:
            raise HttpError(404, "NotFound", f"Job {request.params['job']} was not found.")
        return job

    # --- operations ---------------------------------------------------------------------------------

    def submit(self, request: Request) -> Response:
        service = self._service(request)
        body = _body(request)
        now = dt.datetime.now(dt.timezone.utc)
        if "Input" in body and "Inputs" in body:
            raise _bad("DuplicateInputInBatchCall", "Both Input and Inputs were specified; use only Inputs.")
        raw_inputs = body.get("Inputs")
        if raw_inputs is None and body.get("Input") is not None:
            raw_inputs = {service.inputs[0]: body["Input"]} if len(service.inputs) == 1 else None
            if raw_inputs is None:
                raise _bad("MultipleInputsNotAllowed", "The legacy Input form needs a service with one input.")
        if not raw_inputs:
            raise _bad("BatchJobInputsNotSpecified", "The batch job's inputs were not specified.")
        if not isinstance(raw_inputs, dict):
            raise _bad("RequestBodyInvalid", "Inputs must be an object keyed by input name.")
        unknown = [name for name in raw_inputs if name not in service.inputs]
        if unknown:
            raise _bad(
                "InvalidInputNames",
                f"Invalid input name(s) {', '.join(unknown)}. Expected: "
                f"{', '.join(service.inputs)}. Case sensitivity applies.",
            )
        missing = [name for name in service.inputs if name not in raw_inputs]
        if missing:
            raise _bad("BatchJobInputsNotSpecified", f"Missing input(s): {', '.join(missing)}.")
        job_id = uuid.uuid4().hex
        raw_outputs = body.get("Outputs")
        if raw_outputs is None:
            raw_outputs = self._default_outputs(service, job_id)
        if not isinstance(raw_outputs, dict) or not raw_outputs:
            raise _bad(
                "MissingOutputOverrideSpecification", "Outputs must name a blob location for every web service output."
            )
        for name in raw_outputs:
            if name not in service.outputs:
                raise _bad(
                    "InvalidOutputOverrideName",
                    f"Invalid output override name {name}. Expected: "
                    f"{', '.join(service.outputs)}. Case sensitivity applies.",
                )
        missing = [name for name in service.outputs if name not in raw_outputs]
        if missing:
            raise _bad("MissingRequiredOutputOverrides", f"Missing output override(s): {', '.join(missing)}.")

        inputs = {name: _reference(ref, f"input {name}") for name, ref in raw_inputs.items()}
        outputs = {name: _reference(ref, f"output {name}") for name, ref in raw_outputs.items()}
        for ref in inputs.values():
            _check_extension(ref, DATASET_EXTENSIONS)
        for name, ref in outputs.items():
            _check_extension(ref, MODEL_EXTENSIONS if service.kind_of(name) == "model" else DATASET_EXTENSIONS)
        for ref in (*inputs.values(), *outputs.values()):
            expiry = ref.sas_expiry()
            if expiry is not None and expiry <= now:
                raise _bad("ExpiryTimeInThePast", f"The SAS token of {ref.relative_location} has expired.")
        parameters = _parameters(body.get("GlobalParameters"), service)
        for ref in inputs.values():
            if ref.is_local():  # elsewhere the job fails when it reads, as a real one would
                _check_readable(ref)

        job = Job(job_id, service, inputs, outputs, parameters, request=body)
        self.jobs[job.id] = job
        return Response(200, f'"{job.id}"')

    def _default_outputs(self, service: TrainingService, job_id: str) -> dict:
        """Where outputs go without overrides: the workspace's storage, under names of its choosing."""
        if not self.workspace_storage:
            raise _bad(
                "MissingOutputOverrideSpecification",
                "Outputs are required: this emulator has no workspace storage (--storage-connection-string).",
            )
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobServiceClient

        with contextlib.suppress(ResourceExistsError):
            BlobServiceClient.from_connection_string(self.workspace_storage).create_container("experimentoutput")
        return {
            name: {
                "ConnectionString": self.workspace_storage,
                "RelativeLocation": f"experimentoutput/{job_id}/{name}"
                + (".ilearner" if service.kind_of(name) == "model" else ".csv"),
            }
            for name in service.outputs
        }

    def start(self, request: Request) -> Response:
        service = self._service(request)
        job = self._job(request, service)
        with self.emulator.lock:
            if job.status != "NotStarted":
                raise HttpError(
                    400,
                    "InvalidOperation",
                    "Invalid operation.",
                    [("CannotStartJob", f"The job cannot be started because it is in {job.status} state.")],
                )
            job.status, job.started = "Running", dt.datetime.now(dt.timezone.utc).timestamp()
        fault = self.emulator.take_fault("bes.job", kind="job", path=request.path)
        threading.Thread(
            target=self._run, args=(job, fault.fail if fault else None), daemon=True, name=f"job-{job.id}"
        ).start()
        return Response(200)

    def status(self, request: Request) -> Response:
        service = self._service(request)
        job = self._job(request, service)
        now = dt.datetime.now(dt.timezone.utc)
        results = None
        if job.status == "Finished":
            results = {name: ref.result(now) for name, ref in job.outputs.items()}
        code: Any = job.status
        if self.emulator.config.get("legacy_status_codes"):
            code = LEGACY_CODES[job.status]
        return Response(200, {"StatusCode": code, "Results": results, "Details": job.details})

    def cancel(self, request: Request) -> Response:
        service = self._service(request)
        job = self._job(request, service)
        with self.emulator.lock:
            if job.status in ("NotStarted", "Running"):
                job.status, job.ended = "Cancelled", dt.datetime.now(dt.timezone.utc).timestamp()
                job.cancelled.set()
        return Response(200)

    # --- the job itself -------------------------------------------------------------------------

    def _run(self, job: Job, injected_failure: str | None) -> None:
        if job.cancelled.wait(float(self.emulator.config.get("job_seconds", 1.0))):
            return
        try:
            ((_name, source),) = job.inputs.items()
            if injected_failure:  # may quote the input as a service error text would, SAS and all
                url = f"{(source.base_location or '').rstrip('/')}/{source.relative_location}{source.sas_token or ''}"
                signature = unquote((parse_qs((source.sas_token or "").lstrip("?")).get("sig") or [""])[0])
                text = injected_failure.replace("{input_url}", url).replace("{input_signature}", signature)
                raise training.ModuleError(text)
            for ref in (source, *job.outputs.values()):
                if not ref.is_local():
                    raise training.ModuleError(
                        f"Error reading or writing {ref.relative_location}: storage host {ref.host()} cannot be "
                        "reached from this emulator (it reaches only local storage, such as Azurite)."
                    )
            text = source.client().download_blob().readall().decode("utf-8-sig")
            model, metrics = training.train(
                text,
                label=job.service.label_column,
                delimiter="\t" if source.extension == ".tsv" else ",",
                seed=int(job.parameters.get("Random seed", 42)),
                test_fraction=float(job.parameters.get("Test fraction", 0.25)),
            )
            if job.cancelled.is_set():
                return
            for output, ref in job.outputs.items():
                kind = job.service.kind_of(output)
                data = training.model_bytes(model) if kind == "model" else training.evaluation_csv(metrics).encode()
                ref.client().upload_blob(data, overwrite=True)
            outcome, details = "Finished", None
            job.metrics = metrics
        except training.ModuleError as exc:
            outcome, details = "Failed", f"Module execution encountered an error. {exc}"
        except Exception as exc:
            outcome, details = "Failed", f"Error reading or writing a blob: {type(exc).__name__}: {str(exc)[:300]}"
        with self.emulator.lock:
            if job.status == "Running":
                job.status, job.details = outcome, details
                job.ended = dt.datetime.now(dt.timezone.utc).timestamp()


def _bad(detail: str, message: str) -> HttpError:
    return HttpError(400, "BadArgument", "Invalid argument provided.", [(detail, message)])


def _body(request: Request) -> dict:
    if not request.body.strip():
        raise _bad("RequestIsEmpty", "The request body is empty.")
    try:
        body = request.json()
    except (ValueError, UnicodeDecodeError):
        raise _bad("RequestBodyInvalid", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _bad("RequestBodyInvalid", "The request body must be a BatchExecutionRequest object.")
    known = {"Inputs", "Input", "Outputs", "GlobalParameters"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise _bad(
            "RequestBodyInvalid",
            f"Unknown member(s) {', '.join(unknown)}. Keys are PascalCase: {', '.join(sorted(known))}.",
        )
    return body


def _reference(value: object, what: str) -> BlobReference:
    try:
        return parse_reference(value, what)
    except ReferenceError_ as exc:
        raise _bad(exc.code, str(exc)) from None


def _check_extension(ref: BlobReference, allowed: tuple[str, ...]) -> None:
    if ref.extension not in allowed:
        raise _bad(
            "InvalidBlobExtension",
            f"The blob reference: {ref.relative_location} has an invalid or missing file extension. "
            f'Supported file extensions for this output type are: "{", ".join(allowed)}".',
        )


def _check_readable(ref: BlobReference) -> None:
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    try:
        ref.client().get_blob_properties()
    except ResourceNotFoundError:
        raise _bad("BlobNotFound", f"Blob {ref.relative_location} was not found.") from None
    except HttpResponseError as exc:
        raise _bad("InvalidBlob", f"Blob {ref.relative_location} could not be read: HTTP {exc.status_code}.") from None


def _parameters(value: object, service: TrainingService) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _bad("RequestBodyInvalid", "GlobalParameters must be an object.")
    unexpected = [name for name in value if name not in service.parameters]
    if unexpected:
        raise HttpError(
            400,
            "BadUserArgument",
            "Invalid argument provided.",
            [
                (
                    "UnexpectedParameter",
                    f"Unexpected parameter(s): {', '.join(unexpected)}. Parameter names are case-sensitive.",
                )
            ],
        )
    missing = [name for name in service.required_parameters if name not in value]
    if missing:
        raise _bad("MissingRequiredGlobalParameters", f"Missing global parameter(s): {', '.join(missing)}.")
    return {**service.parameters, **value}
