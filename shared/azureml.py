"""Azure Machine Learning (v2) as a trainer: a Command job PUT by name, or a batch endpoint's
training pipeline invoked; status from the job; the gate's metrics from the workspace's MLflow.

Spoken with ``requests`` and ``azure-identity`` (not ``azure-ai-ml``: cold start matters). The
protocol and its sources: ``../shared/reference/azure-ml-v2-protocol.md``; our choices:
``docs/protocol.md``. Two token audiences, each only where it belongs: ARM for jobs, workspace,
datastores and MLflow; ``https://ml.azure.com`` for a batch invocation. Tokens go only to the
configured management host and to the hosts the workspace names for itself (its MLflow host, a
batch endpoint's ``scoringUri``), each also checked against the allow-list.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shared import hosts
from shared.http import ServiceError, bearer_token, ci_get, read_json, send, text_field
from shared.redact import shown
from shared.training import CANCELLED, FAILED, FINISHED, NOT_STARTED, RUNNING, JobState, Submission

ARM_SCOPE = "https://management.azure.com/.default"
ML_SCOPE = "https://ml.azure.com/.default"
WORKSPACE_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.MachineLearningServices/workspaces/"
    r"[a-zA-Z0-9][a-zA-Z0-9_-]{2,32}",
    re.IGNORECASE,
)
NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}")
API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
# All 14 JobStatus values (the spec's enum) and what each means for a run.
JOB_STATUSES = {
    "NotStarted": NOT_STARTED,
    "Starting": RUNNING,
    "Provisioning": RUNNING,
    "Preparing": RUNNING,
    "Queued": RUNNING,
    "Running": RUNNING,
    "Finalizing": RUNNING,
    "CancelRequested": RUNNING,
    "NotResponding": RUNNING,  # the heartbeat is missing; it "can go ... to any of the previous states"
    "Paused": RUNNING,
    "Unknown": RUNNING,
    "Completed": FINISHED,
    "Failed": FAILED,
    "Canceled": CANCELLED,
}
NEEDS_ATTENTION = ("NotResponding", "Paused", "Unknown")  # recorded in the details; the deadline still runs
JOB_SHAPE = {
    "type": "object",
    "required": ["properties"],
    "properties": {
        "name": {"type": "string"},
        "properties": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string"}, "outputs": {"type": ["object", "null"]}},
        },
    },
}
WORKSPACE_SHAPE = {
    "type": "object",
    "required": ["properties"],
    "properties": {
        "properties": {
            "type": "object",
            "required": ["mlflowtrackinguri"],
            "properties": {"mlflowtrackinguri": {"type": "string"}},
        }
    },
}
DATASTORE_SHAPE = {
    "type": "object",
    "required": ["properties"],
    "properties": {"properties": {"type": "object", "properties": {"containername": {"type": "string"}}}},
}
ENDPOINT_SHAPE = {
    "type": "object",
    "required": ["properties"],
    "properties": {
        "properties": {
            "type": "object",
            "required": ["scoringuri"],
            "properties": {"scoringuri": {"type": "string"}},
        }
    },
}
MODEL_SHAPE = {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}
INVOCATION_SHAPE = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
METRICS = {"type": "array", "items": {"type": "object", "required": ["key"], "properties": {"key": {"type": "string"}}}}
RUN_SHAPE = {
    "type": "object",
    "required": ["run"],
    "properties": {
        "run": {
            "type": "object",
            "properties": {
                "info": {"type": "object"},
                "data": {"type": "object", "properties": {"metrics": METRICS}},
            },
        }
    },
}
SEARCH_SHAPE = {
    "type": "object",
    "properties": {"runs": {"type": "array", "items": {"type": "object", "properties": {"data": {"type": "object"}}}}},
}


class AzureMLError(ServiceError):
    service = "Azure ML"


@dataclass(frozen=True)
class AzuremlConfig:
    """A pipeline's training on an Azure ML (v2) workspace."""

    workspace: str
    datastore: str
    model_name: str
    batch_endpoint: str | None = None
    job: dict | None = field(default=None, hash=False)
    input_name: str = "training_data"
    model_output: str = "model"
    model_type: str = "mlflow_model"
    metrics_run: str = "auto"
    management_url: str = "https://management.azure.com"
    api_version: str = "2025-12-01"
    kind: str = "azureml"


FIELDS = {
    "workspace",
    "datastore",
    "batch_endpoint",
    "job",
    "input_name",
    "model_output",
    "model_name",
    "model_type",
    "metrics_run",
    "management_url",
    "api_version",
}


def parse_config(fields: dict, what: str, ctx) -> AzuremlConfig:
    """A pipeline's ``trainer`` of kind ``azureml``: exact fields, each problem naming the field."""
    from shared.settings import check_fields, fail

    check_fields(fields, what, FIELDS, {"workspace", "datastore", "model_name"})
    workspace = ctx.text(fields, "workspace", what)
    if not WORKSPACE_ID.fullmatch(workspace):
        raise fail(f"{what} workspace", "must be a workspace's ARM id (/subscriptions/.../workspaces/<name>)")
    names = {}
    for name, default in (
        ("datastore", None),
        ("model_name", None),
        ("input_name", "training_data"),
        ("model_output", "model"),
        ("model_type", "mlflow_model"),
    ):
        value = ctx.text(fields, name, what, default)
        if not NAME.fullmatch(value):
            raise fail(f"{what} {name}", f"{shown(value)!r} is not a valid name (letters, digits, '_', '-', '.')")
        names[name] = value
    batch_endpoint, job = fields.get("batch_endpoint"), fields.get("job")
    if (batch_endpoint is None) == (job is None):
        raise fail(what, "needs exactly one of batch_endpoint (a training pipeline) and job (a Command job)")
    if batch_endpoint is not None and not (isinstance(batch_endpoint, str) and NAME.fullmatch(batch_endpoint)):
        raise fail(f"{what} batch_endpoint", "must be the batch endpoint's name")
    if job is not None:
        if not isinstance(job, dict):
            raise fail(f"{what} job", "must be an object: the properties of a Command job")
        if job.get("jobType", "Command") != "Command":
            raise fail(f"{what} job jobType", "must be Command")
        for required in ("command", "environmentId"):
            if not isinstance(job.get(required), str) or not job[required]:
                raise fail(f"{what} job {required}", "is required for a Command job")
    metrics_run = ctx.text(fields, "metrics_run", what, "auto")
    if metrics_run not in ("auto", "job"):
        raise fail(
            f"{what} metrics_run", "must be 'auto' (the job's run, else its one child run with the metric) or 'job'"
        )
    version = ctx.text(fields, "api_version", what, "2025-12-01")
    if not API_VERSION.fullmatch(version):
        raise fail(f"{what} api_version", f"{shown(version)!r} is not an api-version (YYYY-MM-DD)")
    management = ctx.url(fields.get("management_url", "https://management.azure.com"), f"{what} management_url", "arm")
    return AzuremlConfig(
        workspace=workspace.rstrip("/"),
        batch_endpoint=batch_endpoint,
        job=json.loads(json.dumps(job)) if job is not None else None,
        metrics_run=metrics_run,
        management_url=management.rstrip("/"),
        api_version=version,
        **names,
    )


class AzureMLClient:
    """The calls, with the shared HTTP plumbing: ARM-audience tokens for the control plane and MLflow,
    ``ml.azure.com`` for a batch invocation; every URL host-checked before a token goes to it."""

    def __init__(self, config, credential: Any, session, *, timeout: float, extra_hosts=()) -> None:
        """``config``: anything with ``management_url``, ``workspace`` and ``api_version`` (a trainer's
        configuration, an online endpoint target)."""
        self.config, self._credential, self._session = config, credential, session
        self._timeout = (min(10.0, timeout), timeout)
        self._extra = tuple(extra_hosts)
        self._mlflow_base: str | None = None

    @property
    def workspace_url(self) -> str:
        return self.config.management_url + self.config.workspace

    def call(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        scope: str = ARM_SCOPE,
        kind: str = "arm",
        body: Any = None,
        params: dict | None = None,
        headers: dict | None = None,
        token: str | None = None,
    ):
        """One call: the host checked for ``kind`` first; ``token`` (an endpoint's scoring key or token)
        instead of one of ``scope`` from the credential."""
        host = urlsplit(url).hostname
        try:
            hosts.check(host, kind, self._extra)
        except hosts.HostRefused as exc:
            raise AzureMLError(
                f"refusing to send a token to {url[:120]}: {exc}", operation=operation, code="UntrustedHost"
            ) from None
        data = None if body is None else json.dumps(body).encode("utf-8")
        sent = {
            "Authorization": f"Bearer {token or bearer_token(self._credential, scope, AzureMLError)}",
            "Accept": "application/json",
            "Content-Type": "application/json; charset=utf-8",
            **(headers or {}),
        }
        return send(
            self._session,
            AzureMLError,
            operation,
            method,
            url,
            headers=sent,
            timeout=self._timeout,
            params=params,
            body=data,
        )

    def arm(self, operation: str, method: str, path: str, body: Any = None):
        return self.call(
            operation, method, self.workspace_url + path, body=body, params={"api-version": self.config.api_version}
        )

    def mlflow(self, operation: str, method: str, path: str, *, params=None, body=None):
        """MLflow REST on the workspace's own tracking server (its URI read from the workspace)."""
        if self._mlflow_base is None:
            workspace = read_json(self.arm("workspace", "GET", ""), AzureMLError, "workspace", WORKSPACE_SHAPE)
            self._mlflow_base = mlflow_base(ci_get(ci_get(workspace, "properties"), "mlFlowTrackingUri"))
        return self.call(operation, method, self._mlflow_base + path, kind="azureml_mlflow", params=params, body=body)


def mlflow_base(tracking_uri: str) -> str:
    """The REST base of an ``azureml://`` tracking URI: ``https://`` (``http://`` for loopback, as an
    emulator serves it) + the URI's host and path + ``/api/2.0/mlflow``."""
    if not isinstance(tracking_uri, str) or not tracking_uri.startswith("azureml://"):
        raise AzureMLError(
            f"the workspace's mlFlowTrackingUri is not an azureml:// URI: {shown(str(tracking_uri)[:120])!r}",
            operation="workspace",
            code="UnexpectedResponse",
        )
    rest = tracking_uri[len("azureml://") :].rstrip("/")
    scheme = "http" if hosts.is_loopback(urlsplit("//" + rest).hostname or "") else "https"
    return f"{scheme}://{rest}/api/2.0/mlflow"


class AzureMLTrainer:
    """Training on an Azure ML (v2) workspace: one job per run attempt, named after it."""

    kind = "azureml"
    cancel_grace = dt.timedelta(minutes=10)
    data_extensions = (".csv", ".tsv", ".parquet", ".json", ".jsonl")  # a uri_file the job's code reads

    def __init__(self, config: AzuremlConfig, client: AzureMLClient, *, gate_metric: str) -> None:
        self.config, self.client, self.gate_metric = config, client, gate_metric

    @staticmethod
    def job_name(run) -> str:
        """Derived from the run: a retried submission PUTs the same job, never a second; only a failed
        job resubmitted (``RESUBMIT_FAILED_JOBS``) gets a new name."""
        return f"autopilot-{run.run_id.lower()}-{int(run.resubmissions or 0) + 1}"

    def input_uri(self, run) -> str:
        return f"azureml://datastores/{self.config.datastore}/paths/{run.blob_name}"

    def tags(self, run) -> dict[str, str]:
        return {
            "autopilot.run": run.run_id,
            "autopilot.pipeline": run.pipeline,
            "autopilot.blob": run.blob_name[:256],
            "autopilot.etag": str(run.blob_etag or ""),
        }

    def job_body(self, run) -> dict:
        c = self.config
        job = json.loads(json.dumps(c.job))
        job["jobType"] = "Command"
        job.setdefault("experimentName", f"autopilot-{run.pipeline}")
        job["inputs"] = {
            **(job.get("inputs") or {}),
            c.input_name: {"jobInputType": "uri_file", "uri": self.input_uri(run)},
        }
        job["outputs"] = {
            **(job.get("outputs") or {}),
            c.model_output: {"jobOutputType": c.model_type, "mode": "Upload"},
        }
        job["tags"] = {**(job.get("tags") or {}), **self.tags(run)}
        return {"properties": job}

    def invocation_body(self, run) -> dict:
        c = self.config
        return {
            "properties": {
                "InputData": {c.input_name: {"JobInputType": "UriFile", "Uri": self.input_uri(run)}},
                "properties": {"experimentName": f"autopilot-{run.pipeline}"},
                "tags": self.tags(run),
            }
        }

    def submit(self, run, now: dt.datetime) -> Submission:
        if self.config.job is not None:
            name = self.job_name(run)
            response = self.client.arm("submit", "PUT", f"/jobs/{name}", self.job_body(run))
            read_json(response, AzureMLError, "submit", JOB_SHAPE)
        else:
            name = self._invoke(run)
        return Submission(name, {"model": f"azureml://jobs/{name}/outputs/{self.config.model_output}/paths/"})

    def _invoke(self, run) -> str:
        endpoint = read_json(
            self.client.arm("endpoint", "GET", f"/batchEndpoints/{self.config.batch_endpoint}"),
            AzureMLError,
            "endpoint",
            ENDPOINT_SHAPE,
        )
        scoring = ci_get(ci_get(endpoint, "properties"), "scoringUri")
        response = self.client.call(
            "submit", "POST", scoring, scope=ML_SCOPE, kind="azureml_inference", body=self.invocation_body(run)
        )
        name = read_json(response, AzureMLError, "submit", INVOCATION_SHAPE)["name"]
        if not NAME.fullmatch(name):
            raise AzureMLError(
                f"the invocation named an unusable job {shown(name[:80])!r}",
                operation="submit",
                code="UnexpectedResponse",
            )
        return name

    def start(self, job_id: str) -> None:
        """A v2 job starts when it is created: nothing to do."""

    def status(self, job_id: str) -> JobState:
        response = self.client.arm("status", "GET", f"/jobs/{job_id}")
        properties = ci_get(read_json(response, AzureMLError, "status", JOB_SHAPE), "properties")
        raw = str(ci_get(properties, "status"))
        state = JOB_STATUSES.get(raw)
        if state is None:
            raise AzureMLError(
                f"unknown job status {shown(raw[:40])!r}", operation="status", code="UnexpectedResponse", transient=True
            )
        error = ci_get(properties, "error")
        details = None
        if raw in NEEDS_ATTENTION:
            details = f"the job is {raw}"
        elif state in (FAILED, CANCELLED):
            details = text_field(ci_get(error, "message")) or f"the job ended {raw}"
        reported = {
            name: text_field(ci_get(output, "uri"))
            for name, output in (ci_get(properties, "outputs") or {}).items()
            if isinstance(output, dict)
        }
        return JobState(state, details, {"status": raw, **reported})

    def cancel(self, job_id: str) -> None:
        """Cancel, then follow the operation's ``Location`` (bounded) until the service says it is done."""
        try:
            response = self.client.arm("cancel", "POST", f"/jobs/{job_id}/cancel")
        except AzureMLError as exc:
            if exc.http_status == 404:
                return  # gone already
            raise
        location = response.headers.get("Location")
        deadline = time.monotonic() + 30
        while location and response.status_code == 202 and time.monotonic() < deadline:
            retry_after = (response.headers.get("Retry-After") or "").strip()
            time.sleep(min(float(retry_after), 10.0) if retry_after.isdigit() else 1.0)
            response = self.client.call("cancel", "GET", location)

    def evaluation(self, run) -> dict[str, float]:
        """The metrics the job logged on MLflow: its own run's; with ``metrics_run: auto``, when the gate's
        metric is not there, those of the one child run that logged it."""
        from shared.gate import EvaluationError, metric

        document = self._run(run.job_id)
        own = _metrics(document)
        if metric(own, self.gate_metric) is not None or self.config.metrics_run == "job":
            return own
        experiment = str(ci_get(ci_get(document, "info"), "experiment_id") or "")
        search = {
            "experiment_ids": [experiment],
            "filter": f"tags.mlflow.parentRunId = '{run.job_id}'",
            "max_results": 100,
        }
        found = read_json(
            self.client.mlflow("metrics", "POST", "/runs/search", body=search), AzureMLError, "metrics", SEARCH_SHAPE
        )
        children = [(ci_get(ci_get(r, "info"), "run_id"), _metrics(r)) for r in found.get("runs") or []]
        carrying = [(rid, m) for rid, m in children if metric(m, self.gate_metric) is not None]
        if len(carrying) == 1:
            return carrying[0][1]
        if not carrying:
            raise EvaluationError(
                f"job {run.job_id} logged no {self.gate_metric!r} metric, on its run or on any of its "
                f"{len(children)} child runs",
                "EvaluationMissing",
            )
        raise EvaluationError(
            f"{len(carrying)} child runs of job {run.job_id} logged {self.gate_metric!r} "
            f"({', '.join(str(rid) for rid, _ in carrying)}): log it once, or set metrics_run to 'job'",
            "EvaluationAmbiguous",
        )

    def _run(self, run_id: str) -> dict:
        response = self.client.mlflow("metrics", "GET", "/runs/get", params={"run_id": run_id})
        return read_json(response, AzureMLError, "metrics", RUN_SHAPE)["run"]

    @staticmethod
    def model_version(run) -> str:
        """Derived from the run, so a retried registration is the same version, never a second."""
        return run.run_id.lower()

    def register(self, run, metrics: dict[str, float], metric: str, value: float) -> dict:
        """Register the job's model output as a version of ``model_name``: its URI, type and job, with
        the run, the source blob and the gate's metric as tags. Returns what the run records."""
        c = self.config
        version = self.model_version(run)
        body = {
            "properties": {
                "modelType": c.model_type,
                "modelUri": f"azureml://jobs/{run.job_id}/outputs/{c.model_output}/paths/",
                "jobName": run.job_id,
                "description": f"retrained by the autopilot on {run.blob_name[:200]}",
                "tags": {**self.tags(run), "autopilot.metric": metric, "autopilot.value": f"{value:.6f}"},
            }
        }
        response = self.client.arm("register", "PUT", f"/models/{c.model_name}/versions/{version}", body)
        registered = read_json(response, AzureMLError, "register", MODEL_SHAPE)
        return {"name": c.model_name, "version": version, "id": ci_get(registered, "id") or ""}

    def probe(self) -> str:
        _, container = self.datastore_target()
        what = f"batch endpoint {self.config.batch_endpoint}" if self.config.batch_endpoint else "Command jobs"
        if self.config.batch_endpoint:
            self.client.arm("endpoint", "GET", f"/batchEndpoints/{self.config.batch_endpoint}")
        return (
            f"workspace reachable, token accepted; datastore {self.config.datastore} -> container {container}; {what}"
        )

    def datastore_target(self) -> tuple[str | None, str | None]:
        """The storage account and container the datastore points at (for ``check``)."""
        store = read_json(
            self.client.arm("datastore", "GET", f"/datastores/{self.config.datastore}"),
            AzureMLError,
            "datastore",
            DATASTORE_SHAPE,
        )
        properties = ci_get(store, "properties")
        return ci_get(properties, "accountName"), ci_get(properties, "containerName")

    def preview(self, run, now: dt.datetime) -> tuple[str, dict]:
        if self.config.job is not None:
            return f"PUT {self.config.workspace}/jobs/{self.job_name(run)}", self.job_body(run)
        return f"POST the scoringUri of batch endpoint {self.config.batch_endpoint}", self.invocation_body(run)


def _metrics(run_document: dict) -> dict[str, float]:
    """The latest value of each numeric metric of an MLflow run document."""
    values = {}
    for entry in ci_get(ci_get(run_document, "data"), "metrics") or []:
        key, value = ci_get(entry, "key"), ci_get(entry, "value")
        if isinstance(key, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = float(value)
    return values


def build(config: AzuremlConfig, svc) -> AzureMLTrainer:
    s = svc.settings
    pipeline = next(p for p in s.pipelines if p.trainer is config)
    client = AzureMLClient(
        config, svc.azure_credential(), svc.session(), timeout=s.http_timeout_seconds, extra_hosts=s.extra_allowed_hosts
    )
    return AzureMLTrainer(config, client, gate_metric=pipeline.gate.metric)
