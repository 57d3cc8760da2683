"""Composition root: trigger decorators wired to plain functions in ``shared``. Nothing else lives here."""

import logging

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob_types

from shared import telemetry, workflow
from shared.settings import blob_trigger_source, notify_queue, schedules
from shared.storage import blob_ref_from_properties

telemetry.configure_azure_monitor()  # before the app object, as the Functions OpenTelemetry guide says
app = func.FunctionApp()
log = logging.getLogger("retraining")
# The Azure SDKs log every HTTP request at INFO; keep their warnings, drop the noise.
logging.getLogger("azure").setLevel(logging.WARNING)


@app.function_name("retrain_on_upload")
@app.blob_trigger(
    arg_name="blob",
    path="%TRAINING_CONTAINER%/{name}",
    connection="AzureWebJobsStorage",
    source=blob_trigger_source(),
)
def retrain_on_upload(blob: blob_types.BlobClient, context: func.Context) -> None:
    """New training data: record a run and start (or queue) its BES retraining job.

    The binding hands over a ``BlobClient``, not the content: only the blob's properties (ETag,
    size) are read, so memory does not grow with the upload.
    """
    from azure.core.exceptions import ResourceNotFoundError

    try:
        props = blob.get_blob_properties()
    except ResourceNotFoundError:
        log.warning(
            "blob %s/%s vanished before it could be read; nothing to train", blob.container_name, blob.blob_name
        )
        return
    ref = blob_ref_from_properties(blob.container_name, blob.blob_name, props)
    outcome = workflow.start_run_for_blob(
        workflow.get_services(), ref, source="blob", actor=f"blob-trigger/{context.invocation_id}"
    )
    if outcome.action != "unrouted":  # an unrouted upload was recorded and logged once already
        log.info("run %s for %s: %s (%s)", outcome.run_id, ref.path, outcome.action, outcome.status)


@app.function_name("poll_runs")
@app.timer_trigger(arg_name="timer", schedule="%POLL_SCHEDULE%", run_on_startup=False, use_monitor=True)
def poll_runs(timer: func.TimerRequest, context: func.Context) -> None:
    """Move active runs on: BES job state, deadline, evaluation gate, hand-off to deployment."""
    from shared import poll

    outcomes = poll.poll(workflow.get_services(), actor=f"timer-poll/{context.invocation_id}")
    for outcome in outcomes:
        log.info("run %s: %s (%s)", outcome.run_id, outcome.action, outcome.status)
    if timer.past_due:
        log.info("poll ran late (past due)")


@app.function_name("run_command")
@app.queue_trigger(arg_name="msg", queue_name="%COMMANDS_QUEUE%", connection="AzureWebJobsStorage")
def run_command(msg: func.QueueMessage, context: func.Context) -> None:
    """Deploy and rollback commands (from the poll and from other systems); retried by the queue."""
    from shared import commands

    result = commands.handle(
        workflow.get_services(),
        msg.get_body(),
        message_id=msg.id,
        dequeue_count=msg.dequeue_count or 1,
        actor=f"queue/{msg.id}",
    )
    log.info("command %s (delivery %s): %s", msg.id, msg.dequeue_count, result)


@app.function_name("nudge_on_ml_event")
@app.event_grid_trigger(arg_name="event")
def nudge_on_ml_event(event: func.EventGridEvent, context: func.Context) -> None:
    """An Azure ML workspace's RunCompleted/RunStatusChanged event: check that job's run now (the timer
    poll stays the source of truth; duplicates, late and unknown events change nothing)."""
    from shared import mlevents

    body = mlevents.from_binding(event)
    result = mlevents.nudge(workflow.get_services(), body, actor=f"eventgrid/{context.invocation_id}")
    log.info("event %s (%s): %s", body.get("id"), body.get("eventType"), result)


def _scheduled(function_name: str, pipeline: str | None, schedule: str) -> None:
    """A timer that retrains ``pipeline`` on its newest training data (the same path as uploads)."""

    @app.function_name(function_name)
    @app.timer_trigger(arg_name="timer", schedule=schedule, run_on_startup=False, use_monitor=True)
    def retrain_on_schedule(timer: func.TimerRequest, context: func.Context) -> None:
        outcome = workflow.retrain_on_schedule(
            workflow.get_services(), actor=f"timer-retrain/{context.invocation_id}", pipeline=pipeline
        )
        if outcome:
            log.info("run %s: %s (%s)", outcome.run_id, outcome.action, outcome.status)

    globals()[function_name] = retrain_on_schedule


def _events(queue: str) -> None:
    """The notifications' own queue: each event sent to its receiver, once (``shared/notify.py``)."""

    @app.function_name("send_event")
    @app.queue_trigger(arg_name="msg", queue_name=queue, connection="AzureWebJobsStorage")
    def send_event(msg: func.QueueMessage, context: func.Context) -> None:
        from shared import notify

        result = notify.deliver(
            workflow.get_services(),
            msg.get_body(),
            dequeue_count=msg.dequeue_count or 1,
            max_dequeue_count=notify.max_dequeue_count(),
            actor=f"events/{msg.id}",
        )
        log.info("event %s (delivery %s): %s", msg.id, msg.dequeue_count, result)

    globals()["send_event"] = send_event


# Off unless a receiver is configured (NOTIFY_EVENTGRID_TOPIC, NOTIFY_WEBHOOK_URL).
if _events_queue := notify_queue():
    _events(_events_queue)

# Off by default: a timer needs a schedule, and "off" has no NCRONTAB spelling. One per schedule.
for _name, _pipeline, _schedule in schedules():
    _scheduled(_name, _pipeline, _schedule)


def _json(body: object, status: int = 200) -> func.HttpResponse:
    import json

    from shared.status import SECURITY_HEADERS

    return func.HttpResponse(
        json.dumps(body, default=str), status_code=status, mimetype="application/json", headers=SECURITY_HEADERS
    )


def _bad(exc) -> func.HttpResponse:
    return _json({"error": {"code": "BadParameter", "parameter": exc.parameter, "message": str(exc)}}, 400)


@app.function_name("api_runs")
@app.route(route="runs", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def api_runs(req: func.HttpRequest) -> func.HttpResponse:
    """One pipeline's runs, newest first: ?pipeline=census&status=Rejected&limit=20&cursor=..."""
    from shared import status

    try:
        page = status.list_runs(workflow.get_services(), **status.page_params(req.params))
    except status.BadParameter as exc:
        return _bad(exc)
    return _json(page)


@app.function_name("api_run")
@app.route(route="runs/{run_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def api_run(req: func.HttpRequest) -> func.HttpResponse:
    """One run with its history, metrics, gate decision and per-target deploy results."""
    from shared import status

    svc = workflow.get_services()
    try:
        pipeline = status.pipeline_for(svc, req.params.get("pipeline")).name if req.params.get("pipeline") else None
    except status.BadParameter as exc:
        return _bad(exc)
    run = status.get_run(svc, req.route_params.get("run_id", ""), pipeline)
    if run is None:
        return _json({"error": {"code": "NotFound", "message": "no such run"}}, 404)
    return _json(run)


@app.function_name("api_targets")
@app.route(route="targets", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def api_targets(req: func.HttpRequest) -> func.HttpResponse:
    """What is live on each deploy target (of ?pipeline=, if given), since when, from which run."""
    from shared import status

    svc = workflow.get_services()
    try:
        pipeline = status.pipeline_for(svc, req.params.get("pipeline")).name if req.params.get("pipeline") else None
    except status.BadParameter as exc:
        return _bad(exc)
    return _json({"targets": status.list_targets(svc, pipeline)})


@app.function_name("api_pipelines")
@app.route(route="pipelines", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def api_pipelines(req: func.HttpRequest) -> func.HttpResponse:
    """Each pipeline: its uploads, trainer, gate, targets, schedule, what it is doing, its last error."""
    from shared import status

    return _json({"pipelines": status.list_pipelines(workflow.get_services())})


@app.function_name("api_unrouted")
@app.route(route="unrouted", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def api_unrouted(req: func.HttpRequest) -> func.HttpResponse:
    """Uploads no pipeline claimed, newest first, and why."""
    from shared import status

    return _json({"unrouted": status.list_unrouted(workflow.get_services())})


@app.function_name("status_page")
@app.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def status_page(req: func.HttpRequest) -> func.HttpResponse:
    """The one-page status view (self-contained HTML); ?pipeline= for one pipeline's details."""
    from urllib.parse import urlencode

    from shared import status

    code = req.params.get("code")
    try:
        page = status.page_html(
            workflow.get_services(),
            link_query=f"?{urlencode({'code': code})}" if code else "",
            pipeline=req.params.get("pipeline") or None,
        )
    except status.BadParameter as exc:
        return _bad(exc)
    return func.HttpResponse(page, mimetype="text/html", charset="utf-8", headers=status.SECURITY_HEADERS)


@app.function_name("status_run_page")
@app.route(route="status/runs/{run_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def status_run_page(req: func.HttpRequest) -> func.HttpResponse:
    """One run as a readable page: history, gate, deploys, errors (its JSON: /api/runs/<id>)."""
    from urllib.parse import urlencode

    from shared import status

    code = req.params.get("code")
    svc = workflow.get_services()
    try:
        pipeline = status.pipeline_for(svc, req.params.get("pipeline")).name if req.params.get("pipeline") else None
    except status.BadParameter as exc:
        return _bad(exc)
    page = status.run_page_html(
        svc,
        req.route_params.get("run_id", ""),
        pipeline=pipeline,
        link_query=f"?{urlencode({'code': code})}" if code else "",
    )
    if page is None:
        return _json({"error": {"code": "NotFound", "message": "no such run"}}, 404)
    return func.HttpResponse(page, mimetype="text/html", charset="utf-8", headers=status.SECURITY_HEADERS)
