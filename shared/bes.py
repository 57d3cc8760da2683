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
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared.redact import redact

log = logging.getLogger(__name__)

API_VERSION = "2.0"
STATUSES = ("NotStarted", "Running", "Failed", "Cancelled", "Finished")
TERMINAL_STATUSES = frozenset({"Failed", "Cancelled", "Finished"})
TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class BesError(Exception):
    """A BES call failed. ``transient`` says whether trying again later can help."""

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        http_status: int | None = None,
        code: str | None = None,
        detail_codes: tuple[str, ...] = (),
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.operation = operation
        self.http_status = http_status
        self.code = code
        self.detail_codes = detail_codes
        self.transient = transient

    def as_record(self) -> dict[str, Any]:
        """What a run records about this error (already free of secrets)."""
        return {
            "operation": self.operation,
            "http_status": self.http_status,
            "code": self.code,
            "detail_codes": list(self.detail_codes),
            "message": redact(self.message)[:2000],
            "transient": self.transient,
        }

    def __str__(self) -> str:
        codes = "/".join(c for c in (self.code, *self.detail_codes) if c)
        status = f"HTTP {self.http_status} " if self.http_status else ""
        return redact(f"BES {self.operation} failed: {status}{codes}: {self.message}".replace(": :", ":"))


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


class CappedRetry(Retry):
    """``urllib3.Retry`` that will not sleep longer than ``max_retry_after`` for a ``Retry-After``.

    A function invocation has a time budget; a server asking for an hour is treated as asking for
    the cap, and the attempt after that surfaces the error to the caller.
    """

    max_retry_after = 30.0

    def get_retry_after(self, response):
        value = super().get_retry_after(response)
        return None if value is None else min(value, self.max_retry_after)

    def new(self, **kw):  # keep the cap across the copies urllib3 makes per attempt
        new = super().new(**kw)
        new.max_retry_after = self.max_retry_after
        return new


def make_session(retries: int = 4, backoff: float = 0.5, max_retry_after: float = 30.0) -> requests.Session:
    """A session whose adapter retries connection errors and 429/503/504 with backoff."""
    retry = CappedRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        backoff_factor=backoff,
        backoff_max=max_retry_after,
        status_forcelist=(429, 503, 504),
        # POST too: a duplicate submit only creates a job that is never started, and start is
        # idempotent from the caller's view (CannotStartJob is resolved by reading the status).
        allowed_methods=None,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    retry.max_retry_after = max_retry_after
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


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
        if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
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
        try:
            body = response.json()
        except ValueError:
            raise BesError(
                "status response is not JSON",
                operation="status",
                http_status=response.status_code,
                code="UnexpectedResponse",
                transient=True,
            ) from None
        return parse_status(body)

    def cancel(self, job_id: str) -> None:
        """Cancel (delete) a job; BES marks a NotStarted or Running job Cancelled."""
        self._call("cancel", "DELETE", self._job_url(job_id))

    def _job_url(self, job_id: str) -> str:
        if not _JOB_ID_RE.match(job_id):
            raise ValueError(f"not a BES job id: {job_id!r}")
        return f"{self.jobs_url}/{job_id}"

    def _call(self, operation: str, method: str, url: str, json_body: Any = None) -> requests.Response:
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Accept": "application/json",
            "Content-Type": "application/json; charset=utf-8",
        }
        data = b"" if json_body is None else json.dumps(json_body).encode("utf-8")
        try:
            response = self._session.request(
                method,
                url,
                params={"api-version": API_VERSION},
                data=data,
                headers=headers,
                timeout=self._timeout,
            )
        except requests.RequestException as exc:
            raise BesError(
                f"{type(exc).__name__}: {redact(exc, self._api_key)}",
                operation=operation,
                code="ConnectionError",
                transient=True,
            ) from None
        log.debug("BES %s %s -> %s", operation, method, response.status_code)
        if response.status_code >= 400:
            raise _error_from_response(operation, response)
        return response


def _error_from_response(operation: str, response: requests.Response) -> BesError:
    code, details, message = None, (), response.reason or ""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
        message = response.text[:500] or message
    if isinstance(error, dict):
        code = error.get("code") or None
        message = error.get("message") or message
        items = [d for d in error.get("details") or [] if isinstance(d, dict)]
        details = tuple(str(d["code"]) for d in items if d.get("code"))
        detail_messages = [str(d["message"]) for d in items if d.get("message")]
        if detail_messages:
            message = " ".join([message, *detail_messages]).strip()
    return BesError(
        message,
        operation=operation,
        http_status=response.status_code,
        code=code,
        detail_codes=details,
        transient=response.status_code in TRANSIENT_HTTP,
    )


def parse_status(body: Any) -> JobStatus:
    """Parse a BatchScoreStatus body, tolerating the variants seen in public sources.

    ``StatusCode`` may be a name, a legacy integer 0-4 or its string; ``Canceled`` (one L) and the
    docs' ``"Status Code"`` typo are accepted; keys are matched case-insensitively.
    """
    if not isinstance(body, dict):
        raise BesError(
            "status body is not a JSON object", operation="status", code="UnexpectedResponse", transient=True
        )
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
    if isinstance(raw, int) or (isinstance(raw, str) and raw.strip().isdigit()):
        index = int(raw)
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
