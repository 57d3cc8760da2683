"""Remove secrets from text before it reaches a log, a table entity or a queue message."""

from __future__ import annotations

import re

_PATTERNS = (
    # SAS signatures in URLs or tokens: keep the parameter name so the text stays readable.
    (re.compile(r"(?i)(\bsig=)[^&\s\"']+"), r"\1REDACTED"),
    (re.compile(r"(?i)(AccountKey=)[^;\s\"']+"), r"\1REDACTED"),
    (re.compile(r"(?i)(SharedAccessSignature=)[^;\s\"']+"), r"\1REDACTED"),
    (re.compile(r"(?i)(\bBearer\s+)[A-Za-z0-9\-._~+/=]+"), r"\1REDACTED"),
    (re.compile(r"(?i)(\bapi[-_]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"), r"\1REDACTED"),
)


def redact(text: object, *secrets: str) -> str:
    """Return ``str(text)`` with SAS signatures, account keys, bearer tokens and ``secrets`` masked."""
    out = str(text)
    for secret in secrets:
        if secret and len(secret) >= 8:
            out = out.replace(secret, "REDACTED")
    for pattern, repl in _PATTERNS:
        out = pattern.sub(repl, out)
    return out
