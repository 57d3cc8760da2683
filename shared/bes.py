"""Client for the Azure ML Studio (classic) Batch Execution Service, api-version 2.0.

Speaks exactly the wire protocol in ``docs/protocol.md``: PascalCase bodies, ``Authorization: Bearer``
with the endpoint API key, the job id returned as a quoted JSON string, ``StatusCode`` as a name or a
legacy integer. Retries (429/503/504, dropped connections, honouring ``Retry-After``) come from
``urllib3.Retry``; a 4xx is never retried and surfaces as a :class:`BesError` with the service's codes.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import requests

from shared.http import ServiceError, check_shape, make_session, read_json, send

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
