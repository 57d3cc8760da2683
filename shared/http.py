"""HTTP plumbing shared by the Azure ML clients: one retrying session shape and one error type.

Retries come from ``urllib3.Retry`` (429/503/504 and dropped connections, exponential backoff,
``Retry-After`` honoured but capped); a 4xx is never retried. Errors carry the service's
``error.code`` and ``error.details[].code`` so a run can record exactly what the service said.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared.redact import redact

TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})


def ci_get(mapping: Any, key: str) -> Any:
    """``mapping[key]`` with the key matched case-insensitively (services and examples mix casings)."""
    if isinstance(mapping, dict):
        for k, v in mapping.items():
            if isinstance(k, str) and k.lower() == key.lower():
                return v
    return None


class ServiceError(Exception):
    """A call to an Azure ML service failed. ``transient`` says whether trying again later can help."""

    service = "service"

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
        """What a run records about this error (free of secrets)."""
        return {
            "operation": f"{self.service} {self.operation}",
            "http_status": self.http_status,
            "code": self.code,
            "detail_codes": list(self.detail_codes),
            "message": redact(self.message)[:2000],
            "transient": self.transient,
        }

    def __str__(self) -> str:
        codes = "/".join(c for c in (self.code, *self.detail_codes) if c)
        status = f"HTTP {self.http_status} " if self.http_status else ""
        head = f"{self.service} {self.operation} failed: {status}{codes}".rstrip()
        return redact(f"{head}: {self.message}")


class CappedRetry(Retry):
    """``urllib3.Retry`` that never sleeps longer than ``max_retry_after`` for a ``Retry-After``.

    An invocation has a time budget: a server asking for an hour is treated as asking for the cap,
    and the attempt after that surfaces the error to the caller (whose trigger retries later).
    """

    max_retry_after = 30.0

    def get_retry_after(self, response):
        value = super().get_retry_after(response)
        return None if value is None else min(value, self.max_retry_after)

    def new(self, **kw):  # urllib3 copies the policy per attempt; keep the cap on the copies
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
        # Every method: callers make their non-idempotent calls safe to repeat (see the clients).
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


def send(
    session: requests.Session,
    error_type: type[ServiceError],
    operation: str,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    timeout: tuple[float, float],
    params: dict[str, str] | None = None,
    body: bytes | None = None,
    secrets: tuple[str, ...] = (),
) -> requests.Response:
    """Send one request; raise ``error_type`` for a connection failure or an HTTP error status."""
    try:
        response = session.request(method, url, params=params, data=body, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise error_type(
            f"{type(exc).__name__}: {redact(exc, *secrets)}",
            operation=operation,
            code="ConnectionError",
            transient=True,
        ) from None
    if response.status_code >= 400:
        raise error_from_response(error_type, operation, response)
    return response


def error_from_response(error_type: type[ServiceError], operation: str, response: requests.Response) -> ServiceError:
    """Read ``{"error": {code, message, details: [{code, message}]}}``; tolerate any other body."""
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
    return error_type(
        message,
        operation=operation,
        http_status=response.status_code,
        code=code,
        detail_codes=details,
        transient=response.status_code in TRANSIENT_HTTP,
    )
