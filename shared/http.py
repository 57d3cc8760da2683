"""HTTP plumbing shared by the Azure ML clients: one retrying session shape and one error type.

Retries come from ``urllib3.Retry`` (429/503/504 and dropped connections, exponential backoff,
``Retry-After`` honoured but capped); a 4xx is never retried. Errors carry the service's
``error.code`` and ``error.details[].code`` so a run can record exactly what the service said.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared.redact import hold, redact

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
        self.code = None if code is None else str(code)
        self.detail_codes = tuple(str(c) for c in detail_codes)
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


# Answers by which a service says it did not process the request: repeating even a POST is safe.
REFUSED = frozenset({429, 503})


class CappedRetry(Retry):
    """``urllib3.Retry`` that never sleeps longer than ``max_retry_after`` for a ``Retry-After``, and
    never repeats a POST that may have reached the service.

    An invocation has a time budget: a server asking for an hour is treated as asking for the cap,
    and the attempt after that surfaces the error to the caller (whose trigger retries later).

    A POST creates something (a BES job): after a read timeout or a connection dropped mid-answer the
    job may exist, and a second POST would create a second one whose id we never learn (BES cannot
    list jobs). So a POST is retried only when it never left (connection errors) or was refused
    (429/503); anything else surfaces, and the caller records the attempt.
    """

    max_retry_after = 30.0

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if (method or "").upper() == "POST":
            return status_code in REFUSED
        return super().is_retry(method, status_code, has_retry_after)

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
        # POST only as is_retry allows; the others our clients send are idempotent in effect.
        allowed_methods=frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    retry.max_retry_after = max_retry_after
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def bearer_token(credential: Any, scope: str, error_type: type[ServiceError]) -> str:
    """A token for ``scope`` from an azure-identity credential, held by the redactor; no token now is a
    transient ``CredentialUnavailable`` of ``error_type`` (azure-identity raises several types)."""
    try:
        token = credential.get_token(scope).token
    except Exception as exc:
        raise error_type(
            f"could not get a token for {scope}: {type(exc).__name__}",
            operation="token",
            code="CredentialUnavailable",
            transient=True,
        ) from None
    hold(token, ephemeral=True)
    return token


def no_answer(exc: requests.RequestException, url: str) -> str:
    """One line for a request that got no answer: where to, and the innermost reason, not urllib3's
    nested ``HTTPConnectionPool(...): Max retries exceeded ... <object at 0x...>`` text."""
    where = urlsplit(url).netloc or url[:80]
    if isinstance(exc, requests.Timeout):
        return f"no answer from {where} in time ({type(exc).__name__})"
    reason: BaseException = exc
    for _ in range(5):  # requests wraps urllib3's MaxRetryError, which holds the socket's error
        inner = getattr(reason, "reason", None) or (reason.args[0] if reason.args else None)
        if not isinstance(inner, BaseException):
            break
        reason = inner
    text = re.sub(r"<[^>]*>:\s*", "", str(reason))
    errno = re.search(r"\[Errno -?\d+\]\s*([^)]+)", text)
    text = errno.group(1) if errno else text.removeprefix("Failed to establish a new connection: ")
    return f"cannot connect to {where}: {text[:200]}"


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
            redact(no_answer(exc, url), *secrets),
            operation=operation,
            code="ConnectionError",
            transient=True,
        ) from None
    if response.status_code >= 400:
        raise error_from_response(error_type, operation, response)
    return response


def error_from_response(error_type: type[ServiceError], operation: str, response: requests.Response) -> ServiceError:
    """Read ``{"error": {code, message, details: [{code, message}]}}``, taking what has the right type
    and ignoring the rest: an error is reported whatever shape its body has."""
    code, details, message = None, (), response.reason or ""
    try:
        body = response.json()
    except ValueError:
        body = None
        message = redact(response.text)[:500] or message
    error = ci_get(body, "error")
    if isinstance(error, dict):
        code = text_field(ci_get(error, "code")) or None
        message = text_field(ci_get(error, "message")) or message
        items = ci_get(error, "details")
        items = [d for d in items if isinstance(d, dict)] if isinstance(items, list) else []
        details = tuple(c for c in (text_field(ci_get(d, "code")) for d in items) if c)
        detail_messages = [m for m in (text_field(ci_get(d, "message")) for d in items) if m]
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


def text_field(value: Any) -> str:
    """A string field of an error body: strings as they are, numbers as text, anything else ignored."""
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def folded(value: Any) -> Any:
    """``value`` with every object key lower-cased, for checking the shape of an answer whose key
    casing varies (the clients read keys case-insensitively)."""
    if isinstance(value, dict):
        return {str(k).lower(): folded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [folded(v) for v in value]
    return value


_SHAPE_VALIDATORS: dict[int, Any] = {}


def check_shape(
    body: Any, shape: dict, error_type: type[ServiceError], operation: str, http_status: int | None = None
) -> Any:
    """``body`` if it has ``shape`` (a JSON Schema over lower-cased keys), else a transient
    ``UnexpectedResponse``: a service answering the wrong shape is recorded and retried, never a crash."""
    validator = _SHAPE_VALIDATORS.get(id(shape))
    if validator is None:
        from jsonschema import Draft202012Validator

        validator = _SHAPE_VALIDATORS[id(shape)] = Draft202012Validator(shape)
    from jsonschema.exceptions import best_match

    problem = best_match(validator.iter_errors(folded(body)))
    if problem is not None:
        raise error_type(
            f"unexpected answer: at {problem.json_path}, {problem.message[:300]}",
            operation=operation,
            http_status=http_status,
            code="UnexpectedResponse",
            transient=True,
        )
    return body


def read_json(
    response: requests.Response, error_type: type[ServiceError], operation: str, shape: dict | None = None
) -> Any:
    """The JSON body of a successful answer, checked against ``shape``; anything else (an HTML page
    from a proxy, a truncated body, the wrong shape) is a transient ``UnexpectedResponse``."""
    try:
        body = response.json()
    except ValueError:
        kind = response.headers.get("Content-Type") or "no content type"
        raise error_type(
            f"the answer is not JSON ({kind}): {redact(response.text[:200])!r}",
            operation=operation,
            http_status=response.status_code,
            code="UnexpectedResponse",
            transient=True,
        ) from None
    return body if shape is None else check_shape(body, shape, error_type, operation, response.status_code)
