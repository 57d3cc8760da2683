"""Remove secrets from text before it reaches a log, a table entity, a queue message or a page.

Two layers, applied together by :func:`redact`:

* **values**: every secret the app holds — its API keys, the storage account key, the tokens it
  obtained, the SAS it minted — is registered with :func:`hold` when the app first has it, and removed
  wherever it appears, in each form text may carry it (raw, URL-encoded, JSON-escaped). This catches a
  key a service echoes in an error message, or one a sender put under a field name nobody expected;
* **patterns**, for secrets the app never held: SAS signatures (``sig=``), ``AccountKey=``,
  ``SharedAccessSignature=``, bearer tokens and labelled API keys.

Text is redacted *before* it is truncated, so a secret cut in half never survives as a prefix.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any
from urllib.parse import quote, quote_plus, unquote

MASK = "REDACTED"
# Shorter values would mask ordinary words; every real key, token and signature is far longer.
MIN_SECRET_LENGTH = 8
# Tokens and SAS are minted all the time; keep the newest (their older siblings have expired).
MAX_EPHEMERAL = 2048

_PATTERNS = (
    # SAS signatures in URLs or tokens: keep the parameter name so the text stays readable.
    (re.compile(r"(?i)(\bsig=)[^&\s\"'<>]+"), r"\1" + MASK),
    (re.compile(r"(?i)(AccountKey=)[^;\s\"'<>]+"), r"\1" + MASK),
    (re.compile(r"(?i)(SharedAccessSignature=)[^;\s\"'<>]+"), r"\1" + MASK),
    (re.compile(r"(?i)(\bBearer\s+)[A-Za-z0-9\-._~+/=]+"), r"\1" + MASK),
    (re.compile(r"(?i)(\bapi[-_]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&<>]+"), r"\1" + MASK),
)

# Keys, tokens and signatures are runs of these characters (base64, base64url, URL-encoding, JWT dots):
# such a secret is found by its first characters inside a run, so the cost of redacting grows with
# the text, not with the number of secrets held. Anything else held is replaced literally.
_TOKEN = re.compile(rf"[A-Za-z0-9+/=%._~-]{{{MIN_SECRET_LENGTH},}}")

_lock = threading.Lock()
_kept: dict[str, None] = {}  # long-lived secrets (settings): few, kept for the life of the process
_ephemeral: OrderedDict[str, None] = OrderedDict()  # tokens and SAS: the newest MAX_EPHEMERAL
_index: tuple[dict[str, tuple[str, ...]], tuple[str, ...]] | None = None  # (anchors, literal forms)


def _forms(secret: str) -> set[str]:
    """The spellings under which ``secret`` can appear in text we record."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1], unquote(secret)}
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


def hold(*secrets: str | None, ephemeral: bool = False) -> None:
    """Register secrets the app holds, so that :func:`redact` removes them by value everywhere."""
    global _index
    with _lock:
        added = False
        for secret in secrets:
            if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
                continue
            for form in _forms(secret):
                if form in _kept:
                    continue
                if not ephemeral:
                    _ephemeral.pop(form, None)
                    _kept[form] = None
                    added = True
                elif form in _ephemeral:
                    _ephemeral.move_to_end(form)
                else:
                    _ephemeral[form] = None
                    added = True
        while len(_ephemeral) > MAX_EPHEMERAL:
            _ephemeral.popitem(last=False)
            added = True
        if added:
            _index = None


def hold_sas(token: str) -> None:
    """Register a SAS token the app minted by its signature (the rest of a SAS is not secret)."""
    signature = next((part[4:] for part in token.lstrip("?").split("&") if part.startswith("sig=")), None)
    hold(signature, signature and unquote(signature), ephemeral=True)


def _held() -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    global _index
    with _lock:
        if _index is None:
            anchors: dict[str, list[str]] = {}
            literal = []
            for form in sorted({*_kept, *_ephemeral}, key=len, reverse=True):  # the longest form first
                if _TOKEN.fullmatch(form):
                    anchors.setdefault(form[:MIN_SECRET_LENGTH], []).append(form)
                else:
                    literal.append(form)
            _index = ({k: tuple(v) for k, v in anchors.items()}, tuple(literal))
        return _index


def _without_held(text: str) -> str:
    anchors, literal = _held()
    for form in literal:
        text = text.replace(form, MASK)
    if not anchors:
        return text
    parts, done = [], 0
    for run in _TOKEN.finditer(text):
        position, end = run.start(), run.end()
        while position <= end - MIN_SECRET_LENGTH:
            found = next(
                (
                    f
                    for f in anchors.get(text[position : position + MIN_SECRET_LENGTH], ())
                    if text.startswith(f, position)
                ),
                None,
            )
            if found is None:
                position += 1
                continue
            parts += [text[done:position], MASK]
            position = done = position + len(found)
    return "".join(parts) + text[done:] if parts else text


def redact(text: object, *secrets: str) -> str:
    """``str(text)`` without any held secret, any of ``secrets``, and anything that looks like one."""
    out = str(text)
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            out = out.replace(secret, MASK)
    out = _without_held(out)
    for pattern, replacement in _PATTERNS:
        out = pattern.sub(replacement, out)
    return out


def redact_tree(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with every string redacted; keys included."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(v) for v in value]
    return value


_CONTROL = re.compile(
    # C0/C1 controls, bidi embeddings/overrides/isolates, zero-width and other invisible format
    # characters, line/paragraph separators, BOM, and lone surrogates.
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]"
)


def shown(text: object) -> str:
    """``text`` safe to show a person: control, bidi and invisible characters written as ``\\uXXXX``,
    so a name cannot reorder a line (``invoice\\u202egpj.csv``), hide characters or forge one."""
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", str(text))
