"""Composition root: trigger decorators wired to plain functions in ``shared``. Nothing else lives here."""

import logging

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob_types

from shared import workflow
from shared.settings import blob_trigger_source
from shared.storage import blob_ref_from_properties

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
    log.info("run %s for %s: %s (%s)", outcome.run_id, ref.path, outcome.action, outcome.status)
