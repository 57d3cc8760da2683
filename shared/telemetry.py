"""Observability: every log line of a run's life carries its run, job and target; counters of what
happened; Azure Monitor (OpenTelemetry) when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set.

The ids travel in a context variable and are stamped on every ``LogRecord`` as attributes
(``run_id``, ``job_id``, ``target``, ``pipeline``), which the Azure Monitor exporter sends as
custom dimensions: ``traces | where customDimensions.run_id == "..."`` follows one run.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import traceback
from collections.abc import Iterator

FIELDS = ("pipeline", "run_id", "job_id", "target", "command")
_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("retraining_log", default=None)
_installed = False


@contextlib.contextmanager
def bind(**fields: str | None) -> Iterator[None]:
    """Add ids to every log record made inside the block (in this thread or task)."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def install() -> None:
    """Stamp the bound ids on every record, whoever logs it, and redact it. Idempotent."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return redacted(record)

    logging.setLogRecordFactory(factory)
    _installed = True


def redacted(record: logging.LogRecord) -> logging.LogRecord:
    """The record with its message, arguments, traceback and stack redacted (``shared/redact.py``).

    Done where every record is made, so no handler — the host's, Azure Monitor's, a test's — ever
    sees a secret. The traceback is formatted and redacted here and travels in the message: handlers
    format ``exc_info`` themselves, from exception objects that may quote a secret.
    """
    from shared.redact import redact

    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it on emit; keep what we can read
        message = f"{record.msg} {record.args}"
    if record.exc_info:
        message = f"{message}\n{''.join(traceback.format_exception(*record.exc_info)).rstrip()}"
    if record.stack_info:
        message = f"{message}\n{record.stack_info}"
    record.msg, record.args = redact(message), None
    record.exc_info = record.exc_text = record.stack_info = None
    return record


def configure_azure_monitor() -> bool:
    """Export logs, traces and metrics to Application Insights if the standard setting is present.

    Called once, before the app object is created (as the Functions OpenTelemetry guide says).
    """
    if not os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
        return False
    from azure.monitor.opentelemetry import configure_azure_monitor as configure

    configure(logger_name="", enable_live_metrics=False)
    return True


_COUNTERS: dict = {}


def count(event: str, **attributes: str) -> None:
    """Add one to the counter ``retraining.<event>`` (runs.started, runs.deployed, ...).

    Free when nothing collects metrics: the OpenTelemetry API is loaded by whoever configures a meter
    provider (Azure Monitor, a test), so until then there is nobody to count for, and importing it
    would only lengthen a cold start.
    """
    metrics = sys.modules.get("opentelemetry.metrics")
    if metrics is None:
        return
    counter = _COUNTERS.get(event)
    if counter is None:
        counter = _COUNTERS[event] = metrics.get_meter("retraining-autopilot").create_counter(
            f"retraining.{event}", unit="1", description=f"number of {event.replace('.', ' ')}"
        )
    counter.add(1, {k: v for k, v in attributes.items() if v})


install()
