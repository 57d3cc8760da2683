"""Pre-flight checks of an upload, before a training job is spent on it.

A pipeline's ``preflight`` rules: ``required_columns`` (its header row must name them), ``max_bytes``
and ``min_rows``. With the checks every pipeline has (an extension its trainer reads, not empty), an
upload that fails is a run ended ``Invalid`` with the reason; it starts no job and takes no slot.

What is read is bounded whatever the blob's size: the header from the first ``HEAD_BYTES`` only; rows
are counted, streamed, only for blobs of at most ``COUNT_ROWS_UP_TO`` bytes (larger ones: skipped,
and the skip recorded).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

HEAD_BYTES = 64 * 1024
COUNT_ROWS_UP_TO = 16 * 1024 * 1024


@dataclass(frozen=True)
class Rules:
    """A pipeline's pre-flight rules (all optional)."""

    required_columns: tuple[str, ...] = ()
    max_bytes: int | None = None
    min_rows: int | None = None


@dataclass
class Finding:
    """Why the upload cannot train (``problem``; ``None``: it may), and what was checked or skipped."""

    problem: str | None = None
    notes: list[str] = field(default_factory=list)
    bytes_read: int = 0


def parse_rules(raw: object, what: str) -> Rules:
    """``preflight``: ``{"required_columns": [...], "max_bytes": n, "min_rows": n}`` (exact fields)."""
    from shared.settings import check_fields, fail

    if raw is None:
        return Rules()
    if not isinstance(raw, dict):
        raise fail(what, "must be an object with required_columns, max_bytes and/or min_rows")
    check_fields(raw, what, {"required_columns", "max_bytes", "min_rows"}, set())
    columns = raw.get("required_columns", [])
    if not isinstance(columns, list) or not all(isinstance(c, str) and c.strip() for c in columns):
        raise fail(f"{what} required_columns", "must be a list of column names")
    numbers = {}
    for name in ("max_bytes", "min_rows"):
        value = raw.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise fail(f"{what} {name}", "must be a whole number of at least 1")
        numbers[name] = value
    return Rules(tuple(c.strip() for c in columns), **numbers)


def header_problem(head: bytes, required: Sequence[str], delimiter: str) -> str | None:
    """Which required columns the header row (the first line of ``head``) lacks; matched exactly, after
    trimming spaces and a byte-order mark, as the trainers read CSV headers."""
    import csv  # only when a pipeline names required columns (the first invocation's import stays small)

    text = head.decode("utf-8-sig", errors="replace")
    line = text.split("\n", 1)[0].rstrip("\r")
    if "\n" not in text and len(head) >= HEAD_BYTES:
        return f"its header row is longer than {HEAD_BYTES // 1024} KiB"
    header = [c.strip() for c in next(csv.reader([line], delimiter=delimiter), [])]
    missing = [c for c in required if c not in header]
    if missing:
        shown_header = ", ".join(header[:20]) + (", ..." if len(header) > 20 else "")
        return f"its header row lacks {', '.join(missing)} (it has: {shown_header or 'nothing'})"
    return None


def count_rows(chunks: Iterable[bytes]) -> int:
    """Data rows (non-empty lines after the header) of a stream of bytes, in constant memory."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
    rows, pending, first = 0, "", True
    for chunk in chunks:
        lines = (pending + decoder.decode(chunk)).split("\n")
        pending = lines.pop()
        for line in lines:
            if first:
                first = False
            elif line.strip():
                rows += 1
    tail = pending + decoder.decode(b"", final=True)
    if tail.strip() and not first:
        rows += 1
    return rows


def check(
    blob,
    rules: Rules,
    extensions: Sequence[str],
    read: Callable[[int, int | None], Iterable[bytes]],
    trainer: str,
) -> Finding:
    """Check ``blob`` (a :class:`shared.storage.BlobRef`) against the rules; ``read(offset, length)``
    streams its bytes. Cheapest checks first: most uploads are refused without reading anything."""
    finding = Finding()
    if not blob.name.lower().endswith(tuple(extensions)):
        finding.problem = f"{blob.path!r} is not training data: {trainer} reads only {', '.join(extensions)} files"
        return finding
    if blob.size == 0:
        finding.problem = f"{blob.path!r} is empty"
        return finding
    if rules.max_bytes is not None and blob.size > rules.max_bytes:
        finding.problem = f"{blob.path!r} is {blob.size} bytes, more than max_bytes {rules.max_bytes}"
        return finding
    delimiter = "\t" if blob.name.lower().endswith(".tsv") else ","
    if rules.required_columns:
        head = b"".join(read(0, min(HEAD_BYTES, blob.size)))
        finding.bytes_read += len(head)
        problem = header_problem(head, rules.required_columns, delimiter)
        if problem:
            finding.problem = f"{blob.path!r}: {problem}"
            return finding
        finding.notes.append(f"header has {', '.join(rules.required_columns)}")
    if rules.min_rows is not None:
        if blob.size > COUNT_ROWS_UP_TO:
            finding.notes.append(
                f"min_rows not checked: {blob.size} bytes is more than the {COUNT_ROWS_UP_TO // (1024 * 1024)} MiB "
                "counted"
            )
        else:
            counted = _Counted(read(0, None))
            rows = count_rows(counted)
            finding.bytes_read += counted.total
            if rows < rules.min_rows:
                finding.problem = f"{blob.path!r} has {rows} data rows, fewer than min_rows {rules.min_rows}"
                return finding
            finding.notes.append(f"{rows} data rows")
    return finding


class _Counted:
    """An iterable of chunks that counts the bytes it yields."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks, self.total = chunks, 0

    def __iter__(self):
        for chunk in self.chunks:
            self.total += len(chunk)
            yield chunk


def reader(storage, container: str, name: str, etag: str) -> Callable[[int, int | None], Iterable[bytes]]:
    """``read(offset, length)`` over the exact blob version that was uploaded (``If-Match`` its ETag)."""
    from azure.core import MatchConditions

    def read(offset: int, length: int | None) -> Iterable[bytes]:
        client = storage.blobs.get_blob_client(container, name)
        stream = client.download_blob(
            offset=offset, length=length, etag=etag, match_condition=MatchConditions.IfNotModified
        )
        return stream.chunks() if length is None else iter([stream.readall()])

    return read
