"""Client for the Azure ML Studio (classic) Batch Execution Service, api-version 2.0.

Speaks exactly the wire protocol in ``docs/protocol.md``: PascalCase bodies, ``Authorization: Bearer``
with the endpoint API key, the job id returned as a quoted JSON string, ``StatusCode`` as a name or a
legacy integer. Retries (429/503/504, dropped connections, honouring ``Retry-After``) come from
``urllib3.Retry``; a 4xx is never retried and surfaces as a :class:`BesError` with the service's codes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from shared.http import ServiceError, check_shape, make_session, read_json, send
from shared.training import JobState, Submission

log = logging.getLogger(__name__)

API_VERSION = "2.0"
STATUSES = ("NotStarted", "Running", "Failed", "Cancelled", "Finished")
TERMINAL_STATUSES = frozenset({"Failed", "Cancelled", "Finished"})
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_LEGACY_CODE = re.compile(r"[0-9]{1,3}")
# The BatchScoreStatus body (keys matched case-insensitively, so checked lower-cased): an object;
# StatusCode a name or a legacy number; Results, when present, an object (values read if objects).
STATUS_SHAPE = {
    "type": "object",
    "properties": {
        "statuscode": {"type": ["string", "integer", "null"]},
        "results": {"type": ["object", "null"]},
    },
}


class BesError(ServiceError):
    """A BES call failed."""

    service = "BES"


@dataclass(frozen=True)
class JobStatus:
    """A job's state as BES reports it; ``results`` maps output names to blob references."""

    status: str
    results: dict[str, dict[str, Any]] | None = None
    details: str | None = None
    raw_status: Any = field(default=None, compare=False)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class BesClient:
    """One training web service's BES ``.../jobs`` endpoint."""

    def __init__(
        self,
        jobs_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        self.jobs_url = jobs_url.rstrip("/")
        self._api_key = api_key
        self._timeout = (min(10.0, timeout), timeout)
        self._session = session or make_session()

    def submit(self, request: dict[str, Any]) -> str:
        """Create a job (state NotStarted) and return its id."""
        response = self._call("submit", "POST", self.jobs_url, json_body=request)
        text = response.text.strip()
        try:
            job_id = json.loads(text) if text.startswith('"') else text
        except json.JSONDecodeError:
            job_id = text
        if not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id):
            raise BesError(
                f"unexpected job id in submit response: {text[:100]!r}",
                operation="submit",
                http_status=response.status_code,
                code="UnexpectedResponse",
            )
        return job_id

    def start(self, job_id: str) -> None:
        """Schedule a NotStarted job for execution."""
        self._call("start", "POST", f"{self._job_url(job_id)}/start", json_body=None)

    def status(self, job_id: str) -> JobStatus:
        """Read a job's status; ``results`` is set once it has Finished."""
        response = self._call("status", "GET", self._job_url(job_id))
        return parse_status(read_json(response, BesError, "status"))

    def cancel(self, job_id: str) -> None:
        """Cancel (delete) a job; BES marks a NotStarted or Running job Cancelled."""
        self._call("cancel", "DELETE", self._job_url(job_id))

    def _job_url(self, job_id: str) -> str:
        if not _JOB_ID_RE.fullmatch(job_id):
            raise ValueError(f"not a BES job id: {job_id!r}")
        return f"{self.jobs_url}/{job_id}"

    def _call(self, operation: str, method: str, url: str, json_body: Any = None) -> requests.Response:
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Accept": "application/json",
            "Content-Type": "application/json; charset=utf-8",
        }
        body = b"" if json_body is None else json.dumps(json_body).encode("utf-8")
        response = send(
            self._session,
            BesError,
            operation,
            method,
            url,
            headers=headers,
            timeout=self._timeout,
            params={"api-version": API_VERSION},
            body=body,
            secrets=(self._api_key,),
        )
        log.debug("BES %s %s -> %s", operation, method, response.status_code)
        return response


def parse_status(body: Any) -> JobStatus:
    """Parse a BatchScoreStatus body, tolerating the variants seen in public sources.

    ``StatusCode`` may be a name, a legacy integer 0-4 or its string; ``Canceled`` (one L) and the
    docs' ``"Status Code"`` typo are accepted; keys are matched case-insensitively.
    """
    check_shape(body, STATUS_SHAPE, BesError, "status")
    folded = {str(k).replace(" ", "").lower(): v for k, v in body.items()}
    raw = folded.get("statuscode")
    status = normalise_status(raw)
    if status is None:
        raise BesError(f"unknown job status {raw!r}", operation="status", code="UnknownJobStatusCode", transient=True)
    results = folded.get("results")
    details = folded.get("details")
    return JobStatus(
        status=status,
        results=results if isinstance(results, dict) else None,
        details=None if details is None else str(details),
        raw_status=raw,
    )


def normalise_status(raw: Any) -> str | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int) or (isinstance(raw, str) and _LEGACY_CODE.fullmatch(raw.strip())):
        index = int(raw)  # ASCII digits only: "²" passes str.isdigit() and then int() raises
        return STATUSES[index] if 0 <= index < len(STATUSES) else None
    if isinstance(raw, str):
        folded = raw.strip().lower()
        if folded == "canceled":
            return "Cancelled"
        for name in STATUSES:
            if name.lower() == folded:
                return name
    return None


def blob_reference(base_location: str, relative_location: str, sas_token: str) -> dict[str, Any]:
    """An ``AzureBlobDataReference`` in its SAS form (no connection string, no account key)."""
    return {
        "ConnectionString": None,
        "BaseLocation": base_location,
        "RelativeLocation": relative_location,
        "SasBlobToken": sas_token,
    }


# --- BES as a trainer (shared/training.py) ------------------------------------------------------------

# The input/output SAS must outlive the job: its whole allowed time plus this margin. Past it the job
# can neither read the data nor write a model, so a job we could not cancel is harmless from then on.
SAS_MARGIN = dt.timedelta(minutes=30)
_OUTPUT_NAME = re.compile(r'[^"\\]{1,256}')


@dataclass(frozen=True)
class BesConfig:
    """A pipeline's training web service, reached through BES."""

    jobs_url: str
    api_key: str = field(repr=False)
    input_name: str = "input1"
    model_output: str = "output1"
    evaluation_output: str = "output2"
    global_parameters: Mapping[str, object] = field(default_factory=dict)
    kind: str = "bes"


def parse_config(fields: dict, what: str, ctx) -> BesConfig:
    """A pipeline's ``trainer`` of kind ``bes``: ``jobs_url`` and the key; the web service's input and
    output names and its global parameters default to the flat ``BES_*`` settings."""
    from shared.settings import check_fields, fail, jobs_url

    allowed = {"jobs_url", "api_key", "api_key_setting", "input_name", "model_output", "evaluation_output"}
    check_fields(fields, what, allowed | {"global_parameters"}, {"jobs_url"})
    defaults = ctx.defaults["bes"]
    names = {}
    for name in ("input_name", "model_output", "evaluation_output"):
        value = ctx.text(fields, name, what, defaults[name])
        if not _OUTPUT_NAME.fullmatch(value):
            raise fail(f"{what} {name}", f"{value!r} is not a usable web service input/output name")
        names[name] = value
    if names["model_output"] == names["evaluation_output"]:
        raise fail(f"{what} evaluation_output", "must differ from model_output")
    parameters = fields.get("global_parameters", defaults["global_parameters"])
    if not isinstance(parameters, dict) or not all(isinstance(v, (str, int, float, bool)) for v in parameters.values()):
        raise fail(f"{what} global_parameters", "must be an object of names to string/number values")
    url = jobs_url(ctx.text(fields, "jobs_url", what), f"{what} jobs_url", ctx.extra_hosts)
    return BesConfig(url, ctx.secret(fields, what), global_parameters=dict(parameters), **names)


class BesTrainer:
    """Training on a classic training web service: one BES job per run, with blob-scoped SAS only."""

    kind = "bes"
    cancel_grace = SAS_MARGIN
    data_extensions = (".csv", ".tsv", ".arff")  # what BES accepts as dataset inputs
    # The columns Studio (classic)'s Evaluate Model writes: binary classification, then regression.
    known_metrics = (
        "Accuracy", "Precision", "Recall", "F-Score", "AUC", "Average Log Loss", "Training Log Loss",
        "Negative Log Likelihood", "Mean Absolute Error", "Root Mean Squared Error", "Relative Absolute Error",
        "Relative Squared Error", "Coefficient of Determination",
    )  # fmt: skip

    def __init__(self, config: BesConfig, storage, *, models_container: str, job_timeout_minutes: int, client) -> None:
        self.config, self.storage = config, storage
        self.models_container, self.job_timeout_minutes = models_container, job_timeout_minutes
        self.client = client

    def request(self, run, now: dt.datetime) -> tuple[dict, dict[str, str]]:
        """The BES submit body for ``run`` and the output paths it names.

        Input: a read-only SAS for exactly the training blob. Outputs: create/write SAS for exactly the
        run's own, never-reused blobs. All expire when the job's allowed time (plus a margin) is over.
        """
        c, storage, models = self.config, self.storage, self.models_container
        expiry = now + dt.timedelta(minutes=self.job_timeout_minutes) + SAS_MARGIN
        folder = f"{run.pipeline}/{run.run_id}"
        outputs = {"model": f"{folder}/model.ilearner", "evaluation": f"{folder}/evaluation.csv"}
        base = storage.blob_base_location

        def output(blob: str) -> dict:
            return blob_reference(base, f"{models}/{blob}", storage.blob_sas(models, blob, "cw", expiry, now=now))

        source = storage.blob_sas(run.blob_container, run.blob_name, "r", expiry, now=now)
        request = {
            "Inputs": {c.input_name: blob_reference(base, f"{run.blob_container}/{run.blob_name}", source)},
            "Outputs": {c.model_output: output(outputs["model"]), c.evaluation_output: output(outputs["evaluation"])},
            "GlobalParameters": dict(c.global_parameters),
        }
        return request, {k: f"{models}/{v}" for k, v in outputs.items()}

    def submit(self, run, now: dt.datetime) -> Submission:
        self.storage.ensure_container(self.models_container)
        request, outputs = self.request(run, now)
        return Submission(self.client.submit(request), outputs)

    def start(self, job_id: str) -> None:
        try:
            self.client.start(job_id)
        except BesError as exc:
            if "CannotStartJob" not in exc.detail_codes:
                raise
            # Started by an earlier, interrupted attempt: fine as long as the job is alive or done.
            status = self.client.status(job_id)
            if status.status not in ("Running", "Finished"):
                raise BesError(
                    f"job {job_id} cannot be started: it is {status.status}. {status.details or ''}".strip(),
                    operation="start",
                    code="InvalidOperation",
                    detail_codes=("CannotStartJob",),
                    http_status=exc.http_status,
                ) from None

    def status(self, job_id: str) -> JobState:
        status = self.client.status(job_id)
        reported = {
            name: ref.get("RelativeLocation") for name, ref in (status.results or {}).items() if isinstance(ref, dict)
        }
        return JobState(status.status, status.details, reported)

    def cancel(self, job_id: str) -> None:
        try:
            self.client.cancel(job_id)
        except BesError as exc:
            if exc.http_status != 404:  # gone already: nothing to cancel
                raise

    def evaluation(self, run) -> dict[str, float]:
        """The Evaluate Model CSV the job wrote to our storage (BES's ``Results`` are not trusted)."""
        from azure.core.exceptions import ResourceNotFoundError

        from shared.gate import EvaluationError, parse_evaluation

        path = run.outputs["evaluation"]
        container, blob = path.split("/", 1)
        try:
            data = self.storage.blobs.get_blob_client(container, blob).download_blob().readall()
        except ResourceNotFoundError:
            raise EvaluationError(f"BES reported Finished but {path} is missing", "EvaluationMissing") from None
        try:
            return parse_evaluation(data.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise EvaluationError(f"{path} is not text: {exc}") from None

    def probe(self) -> str:
        try:
            self.client.status("0" * 32)  # a job that cannot exist: 404 proves the URL and the key
        except BesError as exc:
            if exc.http_status == 404:
                return f"{self.config.jobs_url}: reachable, key accepted"
            raise
        raise BesError("a made-up job id was found", operation="status", code="UnexpectedResponse")

    def preview(self, run, now: dt.datetime) -> tuple[str, dict]:
        return f"to BES for {run.blob_container}/{run.blob_name}", self.request(run, now)[0]


def build(config: BesConfig, svc) -> BesTrainer:
    s = svc.settings
    client = BesClient(config.jobs_url, config.api_key, timeout=s.http_timeout_seconds, session=svc.session())
    return BesTrainer(
        config,
        svc.storage,
        models_container=s.models_container,
        job_timeout_minutes=s.job_timeout_minutes,
        client=client,
    )
