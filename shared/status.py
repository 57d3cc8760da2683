"""What operators see: runs, targets and a one-page status view, from the state in Table Storage.

Read-only and cheap: a page of runs is one range query (RowKeys sort newest first), targets are one
small partition. No key, SAS or token is ever part of a view (keys are not stored; errors are redacted).
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Mapping
from typing import Any

from shared import gate
from shared import runs as R
from shared.redact import shown
from shared.runs import Run, utcnow

# The steps a run moves through on its way to production, for a progress bar.
STEPS = (R.REQUESTED, R.SUBMITTED, R.RUNNING, R.APPROVED, R.DEPLOYING, R.DEPLOYED)
MAX_LIMIT = 100


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def run_summary(run: Run, metric: str) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "status": run.status,
        "source": run.source,
        "blob": run.blob_name,
        "created_at": _iso(run.created_at),
        "updated_at": _iso(run.updated_at),
        "ended_at": _iso(run.ended_at),
        "job_id": run.job_id,
        "attempts": run.attempts,
        "check_failures": run.check_failures,
        "last_check_error": run.last_check_error,
        "metric": {"name": metric, "value": _metric(run, metric)},
        "gate": run.gate,
        "targets": run.targets,
        "model": run.model,
        "error": run.error,
    }


def run_detail(run: Run, metric: str) -> dict[str, Any]:
    return {
        **run_summary(run, metric),
        "history": run.history,
        "metrics": run.metrics,
        "outputs": run.outputs,
        "superseded_by": run.superseded_by,
        "blob_etag": run.blob_etag,
        "blob_size": run.blob_size,
    }


def _metric(run: Run, metric: str) -> float | None:
    return gate.metric(run.metrics, metric)


def metric_of(svc, pipeline: str) -> str:
    """The metric a pipeline's gate judges (a pipeline no longer configured: its runs show AUC)."""
    configured = svc.settings.pipeline_named(pipeline)
    return configured.gate.metric if configured else "AUC"


class BadParameter(ValueError):
    """A query parameter of the API is unusable; ``parameter`` names it, the message says why."""

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"parameter {parameter}: {problem}")
        self.parameter = parameter


def pipeline_for(svc, name: str | None):
    """The pipeline a query is about: the one it names, or the only one (naming it is required when
    several are configured)."""
    pipelines = svc.settings.pipelines
    names = ", ".join(p.name for p in pipelines)
    if name is None:
        if len(pipelines) > 1:
            raise BadParameter("pipeline", f"is required: {len(pipelines)} pipelines are configured ({names})")
        return pipelines[0]
    pipeline = svc.settings.pipeline_named(name)
    if pipeline is None:
        raise BadParameter("pipeline", f"unknown pipeline {shown(name[:60])!r}; one of {names}")
    return pipeline


def page_params(params: Mapping[str, str]) -> dict[str, Any]:
    """``pipeline``, ``status``, ``limit`` and ``cursor`` of a runs query, as :func:`list_runs` takes them."""
    raw = (params.get("limit") or "20").strip()
    if not re.fullmatch(r"[0-9]{1,3}", raw):
        raise BadParameter("limit", f"{shown(raw[:20])!r} is not a whole number from 1 to {MAX_LIMIT}")
    return {
        "pipeline": params.get("pipeline") or None,
        "status": params.get("status") or None,
        "limit": int(raw),
        "cursor": params.get("cursor") or None,
    }


def list_runs(
    svc, *, pipeline: str | None = None, status: str | None = None, limit: int = 20, cursor: str | None = None
) -> dict[str, Any]:
    """A page of one pipeline's runs, newest first. Raises :class:`BadParameter` for a bad pipeline,
    status, limit or cursor."""
    chosen = pipeline_for(svc, pipeline)
    if status is not None and status not in R.TRANSITIONS:
        raise BadParameter("status", f"unknown status {shown(status[:40])!r}; one of {', '.join(R.TRANSITIONS)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise BadParameter("limit", f"{limit} is not a whole number from 1 to {MAX_LIMIT}")
    try:
        runs, next_cursor = svc.store.page_runs(chosen.name, status=status, limit=limit, cursor=cursor)
    except ValueError as exc:  # the store could not use the cursor
        raise BadParameter("cursor", f"{exc}; use the next_cursor of a previous page") from None
    return {
        "pipeline": chosen.name,
        "runs": [run_summary(r, chosen.gate.metric) for r in runs],
        "next_cursor": next_cursor,
    }


def find_run(svc, run_id: str, pipeline: str | None = None) -> Run | None:
    """The run with this id: in ``pipeline`` if named, else in whichever pipeline has it (one point read
    per pipeline: run ids are unique across pipelines, which are their partitions)."""
    names = [pipeline] if pipeline else [p.name for p in svc.settings.pipelines]
    return next((run for run in (svc.store.get(name, run_id) for name in names) if run), None)


def get_run(svc, run_id: str, pipeline: str | None = None) -> dict[str, Any] | None:
    run = find_run(svc, run_id, pipeline)
    return None if run is None else {"pipeline": run.pipeline, **run_detail(run, metric_of(svc, run.pipeline))}


def list_targets(svc, pipeline: str | None = None) -> list[dict[str, Any]]:
    """What is live on each target (of ``pipeline``, if named), judged by its pipeline's metric: every
    configured target, and every target with recorded state that is no longer configured (``note``)."""
    recorded = {state.name: state for state in svc.targets.recorded()}
    configured = {target.name: target for target in svc.settings.targets}
    views = []
    for name in [*configured, *sorted(set(recorded) - set(configured))]:
        target, state = configured.get(name), recorded.get(name)
        owner = svc.settings.pipeline_of_target(name)
        if pipeline is not None and (owner is None or owner.name != pipeline):
            continue
        metric = owner.gate.metric if owner else "AUC"
        views.append(
            {
                "name": name,
                "kind": target.kind if target else None,
                "pipeline": owner.name if owner else None,
                "address": target.address if target else None,
                "live_run": state.live_run if state else None,
                "live_model": state.live_model if state else None,
                "since": _iso(state.since) if state else None,
                "previous_run": state.previous_run if state else None,
                "metric": {"name": metric, "value": gate.metric(state.live_metrics if state else None, metric)},
                "deploying_run": state.deploying_run if state else None,
                "rollout": rollout_view(state.rollout if state else None),
                "note": None if target and state else "never deployed to" if target else "not in DEPLOY_TARGETS",
            }
        )
    return views


ROLLOUT_FIELDS = (
    "run", "kind", "stage", "outcome", "reason", "deployment", "replacing", "traffic", "mirror", "kept", "retired",
    "started", "ended", "stages", "probes", "last_error",
)  # fmt: skip


def rollout_view(doc: dict | None) -> dict[str, Any] | None:
    """What an operator reads of a staged target's rollout (in progress, or the last one)."""
    return None if not doc else {k: doc.get(k) for k in ROLLOUT_FIELDS}


def rollout_text(view: dict | None) -> str:
    """A rollout in one line: its stage (or outcome), the traffic and mirror maps, the last probe."""
    if not view:
        return ""

    def shares(weights: dict | None) -> str:
        return " / ".join(f"{name} {share}%" for name, share in sorted((weights or {}).items())) or "none"

    head = view["stage"] if view.get("stage") != "done" else view.get("outcome")
    parts = [f"{head} ({view.get('run')})", f"traffic {shares(view.get('traffic'))}"]
    if view.get("mirror"):
        parts.append(f"mirror {shares(view['mirror'])}")
    if view.get("probes"):
        last = view["probes"][-1]
        parts.append(f"probe {last['errors']}/{last['rows']} errors")
    if view.get("stage") == "done" and view.get("kept"):
        parts.append(f"kept {', '.join(view['kept'])}")
    if view.get("outcome") not in (None, "Promoted"):
        parts.append(str(view.get("reason"))[:160])
    return " · ".join(parts)


def list_pipelines(svc) -> list[dict[str, Any]]:
    """Each pipeline: what it owns, how it judges, and what it is doing (its slot), from one query."""
    slots = {slot.pipeline: slot for slot in svc.store.slots()}
    views = []
    for p in svc.settings.pipelines:
        slot = slots.get(p.name)
        views.append(
            {
                "name": p.name,
                "blob_prefix": p.blob_prefix,
                "trainer": p.trainer.kind,
                "gate": {"metric": p.gate.metric, "min": p.gate.min, "min_improvement": p.gate.min_improvement},
                "targets": list(p.targets),
                "schedule": p.schedule,
                "active_run": slot.active_run if slot else None,
                "waiting_run": slot.waiting_run if slot else None,
                "last_error": slot.last_error if slot else None,
            }
        )
    return views


def list_unrouted(svc, limit: int = 50) -> list[dict[str, Any]]:
    """Uploads no pipeline claimed, newest first, with the reason."""
    return [
        {
            "blob": e.get("blob_name"),
            "etag": e.get("blob_etag"),
            "size": getattr(e.get("blob_size"), "value", e.get("blob_size")),
            "uploaded_at": _iso(e.get("blob_last_modified")),
            "recorded_at": _iso(e.get("recorded_at")),
            "reason": e.get("reason"),
        }
        for e in svc.store.list_unrouted(limit)
    ]


# --- the page ----------------------------------------------------------------------------------------

# Sent with the page and the API: nothing loads from elsewhere, nothing is cached, no referrer leaves
# (links carry the caller's ?code=; see the README), and the page cannot be framed.
SECURITY_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
}
# With more pipelines than this, the page shows their summary and the details of the one asked for.
DETAILED_PIPELINES = 4


def page_html(svc, *, now: dt.datetime | None = None, link_query: str = "", pipeline: str | None = None) -> str:
    """One self-contained HTML page: nothing is loaded from anywhere else. Every pipeline's summary,
    the uploads no pipeline claims, then per pipeline (``pipeline`` only, if named; all of them if
    few) what is live, what is running, its metric over time and its recent runs. ``link_query`` (the
    caller's own ``?code=``) is added to the page's links so they open with the same key."""
    now = now or utcnow()
    e = html.escape
    chosen = [pipeline_for(svc, pipeline)] if pipeline else list(svc.settings.pipelines)
    if not pipeline and len(chosen) > DETAILED_PIPELINES:
        chosen = []
    single = len(svc.settings.pipelines) == 1
    sections = "".join(
        _pipeline_section(svc, p, now, link_query, "" if len(chosen) == 1 else f"-{p.name}") for p in chosen
    )
    if not chosen:
        sections = "<p class=muted>Choose a pipeline above to see its runs.</p>"
    summary = "" if single else _pipelines_table(svc, now, link_query)
    unrouted = _unrouted_table(svc, now)
    title = svc.settings.pipelines[0].name if single else (pipeline or f"{len(svc.settings.pipelines)} pipelines")
    body = f"""<h1>Retraining autopilot</h1>
<div class=muted>{_subtitle(svc)} · {e(now.strftime("%Y-%m-%d %H:%M:%S"))} UTC</div>
{summary}{unrouted}{sections}"""
    return _document(title, body, refresh=True)


# One colour per meaning, on the badges and in the chart alike.
COLOURS = {"ok": "#1a7f37", "bad": "#cf222e", "warn": "#9a6700", "busy": "#0969da", "idle": "#6e7781"}
_STYLE = (
    "".join(f".{kind} {{ background: {colour}; }} " for kind, colour in COLOURS.items())
    + """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1b1f24; background: #fafbfc; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
h3 { font-size: 14px; margin: 18px 0 6px; } section { margin-top: 28px; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #e1e4e8; vertical-align: middle; }
th { background: #f1f3f5; font-weight: 600; } .mono { font-family: ui-monospace, monospace; font-size: 12px; }
.badge { padding: 2px 8px; border-radius: 10px; font-size: 12px; color: #fff; }
.error { color: #cf222e; }
.bar { width: 160px; height: 8px; background: #e1e4e8; border-radius: 4px; overflow: hidden; }
.bar > div { height: 100%; background: #0969da; } .muted { color: #6e7781; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 8px 0; }
dt { color: #6e7781; } dd { margin: 0; }
"""
)


def _document(title: str, body: str, *, refresh: bool = False) -> str:
    """A whole page: self-contained (inline style only, nothing loaded from anywhere else)."""
    meta = '<meta http-equiv="refresh" content="30">\n' if refresh else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="referrer" content="no-referrer">
{meta}<title>Retraining autopilot — {html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
{body}
</body></html>"""


def run_page_html(svc, run_id: str, *, pipeline: str | None = None, link_query: str = "") -> str | None:
    """One run, readable: what it trained on, its metrics, the gate's decision and each deploy per
    target, its errors, and its whole history; the JSON one click away. ``None`` if there is no such run."""
    run = find_run(svc, run_id, pipeline)
    if run is None:
        return None
    e = html.escape
    metric = metric_of(svc, run.pipeline)

    def table(header: list[str], rows: list[list[str]], empty: str, ident: str) -> str:
        head = "".join(f"<th>{e(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
        body = body or f"<tr><td colspan={len(header)} class=muted>{e(empty)}</td></tr>"
        return f"<table id={ident}><tr>{head}</tr>{body}</table>"

    def text(value: object) -> str:
        return e(shown(str(value))) if value not in (None, "") else "—"

    facts = [
        ("pipeline", text(run.pipeline)),
        ("training data", f"<span class=mono>{text(run.blob_name)}</span> ({text(run.blob_size)} bytes)"),
        ("started by", text(run.source)),
        ("job", f"<span class=mono>{text(run.job_id)}</span>, attempt {run.attempts}"),
        ("created", text(_iso(run.created_at))),
        ("updated", text(_iso(run.updated_at))),
        ("ended", text(_iso(run.ended_at))),
    ]
    if run.superseded_by:
        facts.append(("superseded by", f"<span class=mono>{text(run.superseded_by)}</span>"))
    if run.model:
        model = f"{text(run.model.get('name'))} version {text(run.model.get('version'))}"
        facts.append(("registered model", f"{model} <span class='mono muted'>{text(run.model.get('id'))}</span>"))
    if run.check_failures:
        last = run.last_check_error or {}
        facts.append(
            (
                "failed status checks",
                f"{run.check_failures} (last: {text(last.get('code'))}: {text(last.get('message'))})",
            )
        )
    errors = ""
    if run.error:
        errors = (
            f"<h2>Error</h2><p class=error id=error>{text(run.error.get('code'))}: {text(run.error.get('message'))}"
            f" <span class=muted>({text(run.error.get('operation'))})</span></p>"
        )
    metrics = [
        [e(name) + (" <span class=muted>(gate)</span>" if name.lower() == metric.lower() else ""), _num(value)]
        for name, value in sorted((run.metrics or {}).items())
        if isinstance(value, (int, float))
    ]
    decisions = [
        [e(name), _badge("approved", "ok") if d.get("approved") else _badge("rejected", "warn"), text(d.get("reason"))]
        for name, d in sorted(run.gate.items())
    ]
    deploys = [
        [e(name), _badge(str(t.get("status"))), text(t.get("reason")), text(t.get("at") or t.get("updated_at"))]
        for name, t in sorted(run.targets.items())
    ]
    rollouts = ""
    for name in sorted(run.targets):
        state = svc.targets.peek(name)
        doc = state.rollout if state else None
        if not doc or doc.get("run") != run.run_id:
            continue
        stages = [[f"<span class=mono>{text(s.get('at'))}</span>", text(s.get("stage"))] for s in doc.get("stages", [])]
        probes = [
            [
                f"<span class=mono>{text(p.get('at'))}</span>",
                text(p.get("stage")),
                f"{p.get('errors')}/{p.get('rows')}",
                _badge("passed", "ok") if p.get("ok") else _badge("failed", "bad"),
                text(p.get("first_error")),
            ]
            for p in doc.get("probes", [])
        ]
        rollouts += (
            f"<h2>Rollout on {e(name)}</h2><p class=rollout>{text(rollout_text(rollout_view(doc)))}</p>"
            f"<p class=muted>deployment <span class=mono>{text(doc.get('deployment'))}</span>, replacing "
            f"<span class=mono>{text(doc.get('replacing'))}</span>; kept {text(', '.join(doc.get('kept') or []))}</p>"
            + table(["at", "stage"], stages, "no stage yet", f"stages-{e(name)}")
            + table(["at", "stage", "errors", "result", "first error"], probes, "no probe yet", f"probes-{e(name)}")
        )
    history = [
        [
            f"<span class=mono>{text(entry.get('at'))}</span>",
            (
                f"{text(entry.get('from'))} → <b>{text(entry['to'])}</b>"
                if "to" in entry
                else "<span class=muted>note</span>"
            ),
            text(entry.get("by")),
            text(entry.get("reason") or entry.get("event")),
        ]
        for entry in run.history
    ]
    joiner = "&amp;" if link_query else "?"
    own = f"pipeline={e(run.pipeline)}"
    body = f"""<div class=muted><a href="../../status{e(link_query)}">Retraining autopilot</a> &rsaquo; run</div>
<h1><span class=mono>{e(run.run_id)}</span> {_badge(run.status)}</h1>
<div><a id=json href="../../runs/{e(run.run_id)}{e(link_query)}{joiner}{own}">as JSON</a></div>
<dl id=facts>{"".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in facts)}</dl>
{errors}
<h2>Metrics</h2>{table(["metric", "value"], metrics, "no evaluation yet", "metrics")}
<h2>Gate</h2>{table(["target", "decision", "why"], decisions, "not judged yet", "gate")}
<h2>Deploys</h2>{table(["target", "result", "why", "at"], deploys, "nothing deployed", "deploys")}
{rollouts}
<h2>History</h2>{table(["at", "change", "by", "why"], history, "no history", "history")}"""
    return _document(f"run {run.run_id}", body)


def _subtitle(svc) -> str:
    e = html.escape
    pipelines = svc.settings.pipelines
    if len(pipelines) == 1:
        return f"pipeline <b>{e(pipelines[0].name)}</b> · gate {e(pipelines[0].gate.metric)}"
    return f"{len(pipelines)} pipelines"


def _pipelines_table(svc, now: dt.datetime, link_query: str) -> str:
    e = html.escape
    joiner = "&amp;" if link_query else "?"
    rows = []
    for view in list_pipelines(svc):
        link = f"status{e(link_query)}{joiner}pipeline={e(view['name'])}"
        error = view["last_error"]
        problem = (
            f"<span class=error title='{e(shown(error.get('message', '')))}'>{e(shown(error.get('code', '')))}</span>"
            if error
            else "—"
        )
        rows.append(
            f"<tr><td><a href='{link}'>{e(view['name'])}</a></td>"
            f"<td class=mono>{e(shown(view['blob_prefix']) or '(all)')}</td>"
            f"<td>{e(view['trainer'])}</td><td>{e(view['gate']['metric'])}</td>"
            f"<td class=mono>{e(view['active_run'] or '—')}</td><td class=mono>{e(view['waiting_run'] or '—')}</td>"
            f"<td>{e(', '.join(view['targets']) or '—')}</td><td>{problem}</td></tr>"
        )
    return (
        "<h2>Pipelines</h2><table id=pipelines><tr><th>pipeline</th><th>uploads under</th><th>trainer</th>"
        "<th>gate</th><th>active run</th><th>waiting</th><th>targets</th><th>last error</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _unrouted_table(svc, now: dt.datetime) -> str:
    e = html.escape
    unrouted = list_unrouted(svc, limit=20)
    if not unrouted:
        return ""
    rows = "".join(
        f"<tr><td>{e(shown(u['blob'] or ''))}</td><td>{e(_ago(u['recorded_at'], now))}</td>"
        f"<td>{e(shown(u['reason'] or ''))}</td></tr>"
        for u in unrouted
    )
    return (
        "<h2>Uploads no pipeline claims</h2><table id=unrouted><tr><th>training data</th><th>recorded</th>"
        f"<th>why nothing started</th></tr>{rows}</table>"
    )


NO_TARGETS = "<tr><td colspan=7 class=muted>no deploy target configured</td></tr>"


def _pipeline_section(svc, pipeline, now: dt.datetime, link_query: str, sfx: str) -> str:
    e = html.escape
    metric = pipeline.gate.metric
    recent, _ = svc.store.page_runs(pipeline.name, limit=50)
    slot = svc.store.get_slot(pipeline.name)
    active_ids = [i for i in (slot.active_run, slot.waiting_run) if i]
    active = [r for r in (svc.store.get(pipeline.name, i) for i in active_ids) if r]
    active += [r for r in recent if r.status in (R.DEPLOYING, R.APPROVED) and r.run_id not in active_ids]
    targets_rows = "".join(
        f"<tr><td>{e(t['name'])}</td><td>{e(t['kind'])}</td><td class=mono>{e(t['live_run'] or '—')}</td>"
        f"<td>{_num(t['metric']['value'])}</td><td>{e(_ago(t['since'], now))}</td>"
        f"<td class=mono>{e(t['previous_run'] or '—')}</td>"
        f"<td class=rollout>{e(shown(rollout_text(t['rollout']))) or '—'}</td></tr>"
        for t in list_targets(svc, pipeline.name)
    )
    active_rows = "".join(
        f"<tr><td class=mono>{e(r.run_id)}</td><td>{_badge(r.status)}</td><td>{e(shown(r.blob_name))}</td>"
        f"<td>{_progress(r.status)}{_check_failures(r)}</td><td>{e(_ago(_iso(r.created_at), now))}</td></tr>"
        for r in active
    )
    recent_rows = "".join(
        f'<tr><td class=mono><a href="status/runs/{e(r.run_id)}{e(link_query)}">{e(r.run_id)}</a></td>'
        f"<td>{_badge(r.status)}</td>"
        f"<td>{e(shown(r.blob_name))}</td><td>{_num(_metric(r, metric))}</td>"
        f"<td>{e(shown(_targets_text(r)))}</td><td>{e(_ago(_iso(r.updated_at), now))}</td></tr>"
        for r in recent[:20]
    )
    heading = "" if len(svc.settings.pipelines) == 1 else f"<h2>Pipeline {e(pipeline.name)}</h2>"
    level = "h2" if not heading else "h3"
    return f"""<section id=pipeline{e(sfx)}>{heading}
<{level}>Live on each target</{level}>
<table id=targets{e(sfx)}><tr><th>target</th><th>kind</th><th>live run</th><th>{e(metric)}</th><th>since</th>
<th>replaced</th><th>rollout</th></tr>{targets_rows or NO_TARGETS}</table>
<{level}>Active runs</{level}>
<table id=active{e(sfx)}><tr><th>run</th><th>status</th><th>training data</th><th>progress</th><th>started</th></tr>
{active_rows or "<tr><td colspan=5 class=muted>nothing running</td></tr>"}</table>
<{level}>{e(metric)} over time</{level}>
{_chart(recent, metric, sfx, pipeline.gate.min)}
<{level}>Recent runs</{level}>
<table id=recent{e(sfx)}><tr><th>run</th><th>status</th><th>training data</th><th>{e(metric)}</th><th>targets</th>
<th>updated</th></tr>{recent_rows or "<tr><td colspan=6 class=muted>no runs yet</td></tr>"}</table>
</section>"""


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _ago(iso: str | None, now: dt.datetime) -> str:
    if not iso:
        return "—"
    seconds = int((now - R.parse_iso(iso)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{max(seconds, 0)} s ago"


def _badge(status: str, kind: str | None = None) -> str:
    kind = kind or (
        "ok"
        if status in (R.DEPLOYED, R.FINISHED)
        else "bad"
        if status in (R.FAILED, R.TIMED_OUT, R.INVALID)
        else "warn"
        if status in (R.REJECTED, R.PARTIALLY_DEPLOYED, R.CANCELLED, R.AWAITING_APPROVAL)
        else "busy"
        if status in (R.SUBMITTED, R.RUNNING, R.APPROVED, R.DEPLOYING, R.REQUESTED)
        else "idle"
    )
    return f"<span class='badge {kind}'>{html.escape(status)}</span>"


def _check_failures(run: Run) -> str:
    """A stalled job shows before its deadline: how many status checks failed, and the last error."""
    if not run.check_failures or run.ended:
        return ""
    last = run.last_check_error or {}
    title = html.escape(shown(f"{last.get('code')}: {last.get('message')}"[:300]))
    return f"<div class=muted title='{title}'>{run.check_failures} failed status checks</div>"


def _progress(status: str) -> str:
    step = STEPS.index(status) + 1 if status in STEPS else 0
    return f"<div class=bar title='{step}/{len(STEPS)}'><div style='width:{100 * step // len(STEPS)}%'></div></div>"


def _targets_text(run: Run) -> str:
    return ", ".join(f"{name}: {t.get('status')}" for name, t in sorted(run.targets.items())) or "—"


def _chart(runs: list[Run], metric: str, sfx: str = "", minimum: float | None = None) -> str:
    """An inline SVG: the gate metric of each judged run over time (a time axis below), the gate's
    minimum as a line, deploys and rejections marked in their badges' colours, and a legend."""
    points = [(r.created_at, _metric(r, metric), r) for r in reversed(runs) if _metric(r, metric) is not None]
    if not points:
        return f"<p class=muted id=chart{html.escape(sfx)}>no judged run yet</p>"
    width, height, left, right, top, bottom = 720, 250, 56, 32, 48, 40
    values = [v for _, v, _ in points] + ([minimum] if minimum is not None else [])
    low, high = min(values), max(values)
    if high - low < 0.05:
        low, high = low - 0.025, high + 0.025
    first, last = points[0][0], points[-1][0]
    span = max((last - first).total_seconds(), 1.0)

    def x_of(when: dt.datetime) -> float:
        fraction = (when - first).total_seconds() / span if len(points) > 1 else 0.5
        return round(left + (width - left - right) * fraction, 1)

    def y_of(value: float) -> float:
        return round(height - bottom - (height - top - bottom) * (value - low) / (high - low), 1)

    grey = COLOURS["idle"]
    marks = []
    for when, value, run in points:
        x, y = x_of(when), y_of(value)
        label = html.escape(shown(f"{run.run_id}: {metric} {value:.4f} ({run.status})"))
        if run.status in (R.DEPLOYED, R.PARTIALLY_DEPLOYED) or any(
            t.get("status") == "Deployed" for t in run.targets.values()
        ):
            marks.append(
                f"<circle class=deployed cx={x} cy={y} r=6 fill='{COLOURS['ok']}'><title>{label}</title></circle>"
            )
        elif run.status == R.REJECTED:
            marks.append(
                f"<path class=rejected d='M{x - 5},{y - 5}L{x + 5},{y + 5}M{x - 5},{y + 5}L{x + 5},{y - 5}' "
                f"stroke='{COLOURS['warn']}' stroke-width=2.5><title>{label}</title></path>"
            )
        else:
            marks.append(f"<circle cx={x} cy={y} r=4 fill='{grey}'><title>{label}</title></circle>")
    line = " ".join(f"{x_of(w)},{y_of(v)}" for w, v, _ in points)
    base = height - bottom
    axes = [
        f"<line x1={left} y1={base} x2={width - right} y2={base} stroke='#d0d7de'/>",
        f"<text x={left - 6} y={y_of(high) + 4} font-size=11 fill='{grey}' text-anchor=end>{high:.3f}</text>",
        f"<text x={left - 6} y={y_of(low) + 4} font-size=11 fill='{grey}' text-anchor=end>{low:.3f}</text>",
    ]
    ticks = 1 if len(points) == 1 else min(5, len(points))
    same_day = first.date() == last.date()
    for i in range(ticks):
        when = first + (last - first) * (i / (ticks - 1) if ticks > 1 else 0)
        x = x_of(when) if ticks > 1 else x_of(first)
        text = when.strftime("%H:%M:%S" if same_day and span < 3600 else "%H:%M" if same_day else "%m-%d %H:%M")
        axes.append(f"<line class=tick x1={x} y1={base} x2={x} y2={base + 4} stroke='#d0d7de'/>")
        axes.append(f"<text class=tick x={x} y={base + 16} font-size=11 fill='{grey}' text-anchor=middle>{text}</text>")
    axes.append(
        f"<text x={width - right} y={height - 6} font-size=11 fill='{grey}' text-anchor=end>"
        f"{html.escape(first.strftime('%Y-%m-%d'))} (UTC)</text>"
    )
    threshold = ""
    if minimum is not None:
        y = y_of(minimum)
        threshold = (
            f"<line id=gate-min{html.escape(sfx)} x1={left} y1={y} x2={width - right} y2={y} "
            f"stroke='{COLOURS['bad']}' stroke-dasharray='6 4' stroke-width=1.5><title>gate minimum {minimum:g}</title>"
            f"</line><text x={width - right} y={y - 4} font-size=11 fill='{COLOURS['bad']}' text-anchor=end>"
            f"min {minimum:g}</text>"
        )
    legend = (
        f"<g class=legend font-size=12 transform='translate({left},18)'>"
        f"<circle cx=0 cy=-4 r=5 fill='{COLOURS['ok']}'/><text x=10 y=0>deployed</text>"
        f"<path d='M84,-9L94,1M84,1L94,-9' stroke='{COLOURS['warn']}' stroke-width='2.5'/>"
        "<text x=100 y=0>rejected</text>"
        f"<circle cx=172 cy=-4 r=4 fill='{grey}'/><text x=182 y=0>other</text>"
        + (
            f"<line x1=236 y1=-4 x2=256 y2=-4 stroke='{COLOURS['bad']}' stroke-dasharray='6 4'/>"
            f"<text x=262 y=0>gate minimum</text>"
            if minimum is not None
            else ""
        )
        + "</g>"
    )
    return (
        f"<svg id=chart{html.escape(sfx)} width={width} height={height} viewBox='0 0 {width} {height}' role=img "
        f"aria-label='{html.escape(metric)} over time' style='background:#fff;border:1px solid #e1e4e8'>"
        f"{''.join(axes)}{threshold}<polyline points='{line}' fill=none stroke='#8c959f' stroke-dasharray='4 3'/>"
        f"{legend}{''.join(marks)}</svg>"
    )
