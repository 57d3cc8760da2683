"""Does the suite catch a broken build? Each mutant below is a change a careless edit could make to one
guarantee; in a scratch copy of the repository with that one change, the tests listed with it must
fail. A mutant that survives, one that no longer applies to the code, or tests that fail without any
mutant, fail the check. Part of CI (``./dev.sh mutants``).

    .venv/bin/python .ci/mutants.py [word ...]   # only mutants whose name contains one of the words

Add a mutant with every guarantee: the change that would break it, and the tests that prove it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONDITIONAL = "match_condition=MatchConditions.IfNotModified"
UNCONDITIONAL = "match_condition=MatchConditions.Unconditionally"
TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    find: str  # must occur exactly ``count`` times; every occurrence is replaced
    replace: str
    tests: tuple[str, ...]
    count: int = 1


CONCURRENCY = "tests/test_concurrency.py"
MUTANTS = [
    # --- at-least-once: every state change is ETag-conditional ------------------------------------
    Mutant(
        "run save without ETag",
        "shared/store.py",
        f"run_entity(run), mode=UpdateMode.REPLACE, etag=run.etag, {CONDITIONAL}",
        f"run_entity(run), mode=UpdateMode.REPLACE, etag=None, {UNCONDITIONAL}",
        (f"{CONCURRENCY}::test_two_updates_of_one_run_read_at_once_both_stick",),
    ),
    Mutant(
        "pipeline slot save without ETag",
        "shared/store.py",
        f"entity, mode=UpdateMode.REPLACE, etag=slot.etag, {CONDITIONAL}",
        f"entity, mode=UpdateMode.REPLACE, etag=None, {UNCONDITIONAL}",
        (f"{CONCURRENCY}::test_two_uploads_claiming_a_free_slot_at_once_start_one_job",),
    ),
    Mutant(
        "target state save without ETag",
        "shared/store.py",
        f"etag=state.etag,\n                    {CONDITIONAL},",
        f"etag=None,\n                    {UNCONDITIONAL},",
        (f"{CONCURRENCY}::test_two_deploys_claiming_a_target_at_once_update_it_once",),
    ),
    Mutant(
        "command claim without ETag",
        "shared/store.py",
        f"record, mode=UpdateMode.REPLACE, etag=etag, {CONDITIONAL}\n                )\n                return",
        f"record, mode=UpdateMode.REPLACE, etag=None, {UNCONDITIONAL}\n                )\n                return",
        (f"{CONCURRENCY}::test_two_deliveries_taking_over_a_lapsed_claim_at_once_carry_it_out_once",),
    ),
    Mutant(
        "a first-ever slot upserted, not inserted if absent",
        "shared/store.py",
        "                meta = self.table.create_entity(entity)\n            else:",
        "                meta = self.table.upsert_entity(entity)\n            else:",
        (f"{CONCURRENCY}::test_two_uploads_claiming_a_free_slot_at_once_start_one_job",),
    ),
    Mutant(
        "a first-ever target state upserted, not inserted if absent",
        "shared/store.py",
        "meta = self.table.create_entity(state.to_entity())",
        "meta = self.table.upsert_entity(state.to_entity())",
        (f"{CONCURRENCY}::test_two_deploys_claiming_a_target_at_once_update_it_once",),
    ),
    Mutant(
        "per-target deployment lease ignored",
        "shared/deploy.py",
        "if state.deploying_run not in (None, run.run_id) and busy:",
        "if False:",
        ("tests/test_loop.py::test_two_deploys_racing_for_one_target_take_turns",),
    ),
    # --- least privilege ----------------------------------------------------------------------------
    Mutant(
        "BES input/output SAS valid for a year",
        "shared/bes.py",
        "expiry = now + dt.timedelta(minutes=self.job_timeout_minutes) + SAS_MARGIN",
        "expiry = now + dt.timedelta(days=365)",
        ("tests/test_start_run.py::test_bes_gets_blob_scoped_sas_references_and_never_the_account_key",),
    ),
    Mutant(
        "classic model SAS read+write+delete",
        "shared/classic.py",
        'self.storage.blob_sas(container, blob, "r", expiry)',
        'self.storage.blob_sas(container, blob, "rwd", expiry)',
        (
            "tests/test_loop.py::test_the_classic_endpoint_gets_a_read_only_sas_for_exactly_the_model_for_deploy_sas_days",
        ),
    ),
    # --- every run ends -----------------------------------------------------------------------------
    Mutant(
        "resubmission ignores MAX_ATTEMPTS",
        "shared/decisions.py",
        "if resubmit and attempts < max_attempts:",
        "if resubmit:",
        ("tests/test_loop.py::test_resubmission_stops_at_max_attempts_and_the_run_fails",),
    ),
    Mutant(
        "no deadline while the status call fails",
        "shared/poll.py",
        "if enforce and current.status == R.RUNNING and now >= deadline_of(svc, current):",
        "if False:",
        ("tests/test_hostile.py::test_a_status_call_that_keeps_failing_is_counted_and_the_deadline_still_holds",),
    ),
    Mutant(
        "a permanent status error is retried forever",
        "shared/decisions.py",
        "        if not check_transient:",
        "        if False:",
        ("tests/test_hostile.py::test_a_permanent_status_error_ends_the_run_with_the_reason",),
    ),
    Mutant(
        "a legacy StatusCode read with str.isdigit",
        "shared/bes.py",
        "_LEGACY_CODE.fullmatch(raw.strip())",
        "raw.strip().isdigit()",
        ("tests/test_hostile.py::test_a_status_call_that_keeps_failing_is_counted_and_the_deadline_still_holds",),
    ),
    # --- verified deploys ---------------------------------------------------------------------------
    Mutant(
        "ARM read-back verification skipped",
        "shared/deploy.py",
        "            seen = deployer.live()\n",
        '            seen = model if target.kind == "arm" else deployer.live()\n',
        ("tests/test_loop.py::test_an_arm_update_whose_operation_succeeds_but_changes_nothing_is_not_a_deploy",),
    ),
    Mutant(
        "a classic answer's shape not checked",
        "shared/classic.py",
        'ClassicError, "get", ENDPOINT_SHAPE)',
        'ClassicError, "get", None)',
        ("tests/test_hostile.py::test_a_service_that_never_answers_the_right_shape_ends_the_deploy_recorded",),
    ),
    Mutant(
        "an ARM definition's shape not checked",
        "shared/arm.py",
        'ArmError, "get", DEFINITION_SHAPE)',
        'ArmError, "get", None)',
        ("tests/test_hostile.py::test_a_service_that_never_answers_the_right_shape_ends_the_deploy_recorded",),
    ),
    # --- bad input loses nothing --------------------------------------------------------------------
    Mutant(
        "unknown command fields accepted",
        "shared/schemas/command.v1.schema.json",
        '"additionalProperties": false',
        '"additionalProperties": true',
        ("tests/test_commands.py::test_no_message_can_send_credentials_or_data_anywhere_else",),
        count=5,  # retrain, deploy, rollback, approve, reject
    ),
    Mutant(
        "blob names with '..' or a leading '/' accepted",
        "shared/schemas/command.v1.schema.json",
        '"not": {"pattern": "(^/|\\\\\\\\|://|(^|/)\\\\.\\\\.?(/|$)|',
        '"not": {"pattern": "(\\\\\\\\|://|',
        ("tests/test_commands.py::test_no_message_can_send_credentials_or_data_anywhere_else",),
    ),
    Mutant(
        "schema patterns read with Python's '$' (a final newline passes)",
        "shared/commands.py",
        '            char = r"\\Z"\n',
        "            pass\n",
        ("tests/test_hostile.py::test_a_message_that_cannot_be_carried_out_is_recorded_and_consumed_never_lost",),
    ),
    Mutant(
        "settings names matched with re.match (a final newline passes)",
        "shared/settings.py",
        "not name_re.fullmatch(name)",
        "not name_re.match(name)",
        ("tests/test_settings.py::test_a_trailing_newline_does_not_pass_a_name_pattern",),
    ),
    Mutant(
        "an unexpected error in a command is not recorded",
        "shared/commands.py",
        "    except Exception as exc:  # a service, our storage (AzureError), or a bug: retried, then recorded",
        "    except (ServiceError, StaleError, AzureError) as exc:",
        (
            "tests/test_hostile.py::test_an_unforeseen_exception_on_the_last_delivery_still_records_failed_on_"
            "the_command_and_the_run",
        ),
    ),
    Mutant(
        "healing the slot fails the upload that healed it",
        "shared/slot.py",
        "                except (ServiceError, RetryLater) as exc:  # the promoted run's failure is recorded on it",
        "                except ZeroDivisionError as exc:",
        ("tests/test_start_run.py::test_an_upload_that_heals_the_slot_is_not_failed_by_the_run_it_promotes",),
    ),
    Mutant(
        "a failed delivery keeps its lease on the run it recorded",
        "shared/workflow.py",
        "            release(svc, run, actor)  # so the redelivery resumes it at once, "
        "rather than wait out our lease\n",
        "",
        ("tests/test_start_run.py::test_a_delivery_that_fails_after_recording_its_run_gives_up_its_lease",),
    ),
    Mutant(
        "a resent rejected request id stays rejected",
        "shared/store.py",
        'if record["status"] == REJECTED and record.get("message_id") != fields.get("message_id"):',
        "if False:",
        (
            "tests/test_commands.py::test_a_retrain_rejected_because_its_blob_was_missing_runs_when_resent_after_the_upload",
        ),
    ),
    # --- no secret anywhere -------------------------------------------------------------------------
    Mutant(
        "no redaction by value",
        "shared/redact.py",
        "    out = _without_held(out)\n",
        "",
        (
            "tests/test_secrets.py::test_a_key_echoed_without_any_label_is_redacted_by_value",
            "tests/test_secrets.py::test_a_sas_quoted_in_failed_job_details_is_redacted_in_the_run_the_log_and_the_api",
        ),
    ),
    Mutant(
        "the command excerpt cut before it is redacted",
        "shared/commands.py",
        'excerpt = redact(raw.decode("utf-8", "replace"))[:RAW_EXCERPT_CHARS]',
        'excerpt = redact(raw[:RAW_EXCERPT_CHARS].decode("utf-8", "replace"))',
        ("tests/test_secrets.py::test_a_secret_cut_by_the_excerpt_leaves_no_prefix_behind",),
    ),
    Mutant(
        "table writes not redacted",
        "shared/store.py",
        "                value = redact(value)\n",
        "                pass\n",
        ("tests/test_secrets.py::test_every_table_write_is_redacted_whoever_wrote_it",),
    ),
    Mutant(
        "log records not redacted",
        "shared/telemetry.py",
        "record.msg, record.args = redact(message), None",
        "record.msg, record.args = message, None",
        ("tests/test_secrets.py::test_every_log_record_is_redacted_whoever_logs_it",),
    ),
    # --- credentials go only to Azure ML ------------------------------------------------------------
    Mutant(
        "any host accepted",
        "shared/hosts.py",
        "    if KINDS[kind](name) or any(_listed(name, entry) for entry in extra):",
        "    if True:",
        ("tests/test_settings.py::test_credentials_never_go_to_a_host_outside_azure_ml_or_to_an_ip_address",),
    ),
    Mutant(
        "IP addresses accepted",
        "shared/hosts.py",
        '    if address is not None:\n        raise HostRefused(f"{name} is an IP address',
        '    if False:\n        raise HostRefused(f"{name} is an IP address',
        ("tests/test_settings.py::test_credentials_never_go_to_a_host_outside_azure_ml_or_to_an_ip_address",),
    ),
    Mutant(
        "a POST repeated after it may have reached the service",
        "shared/http.py",
        'allowed_methods=frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"}),',
        "allowed_methods=None,",
        ("tests/test_bes_client.py::test_a_dropped_connection_is_retried_for_a_read_but_a_post_is_never_repeated",),
    ),
    # --- many pipelines, isolated -------------------------------------------------------------------
    Mutant(
        "an upload goes to the first matching pipeline, not the longest prefix",
        "shared/settings.py",
        "return max(owners, key=lambda p: len(p.blob_prefix), default=None)",
        "return owners[0] if owners else None",
        ("tests/test_settings.py::test_pipelines_are_parsed_with_defaults_from_the_flat_settings",),
    ),
    Mutant(
        "a target may serve two pipelines",
        "shared/settings.py",
        "            owner = next((p.name for p in pipelines if target in p.targets), None)\n",
        "            owner = None\n",
        ("tests/test_settings.py::test_every_pipeline_problem_is_caught_at_start_naming_the_pipeline_and_the_field",),
    ),
    Mutant(
        "a command without a pipeline goes to the first of several",
        "shared/commands.py",
        "        if len(pipelines) > 1:\n",
        "        if False:\n",
        ("tests/test_pipelines.py::test_a_command_names_its_pipeline_when_there_are_several",),
    ),
    Mutant(
        "an upload no pipeline claims is not recorded",
        "shared/store.py",
        "            self.table.create_entity(entity)\n            return True",
        "            return True",
        ("tests/test_pipelines.py::test_an_upload_no_pipeline_claims_is_recorded_once_and_starts_nothing",),
    ),
    Mutant(
        "pipelines polled one after another",
        "shared/poll.py",
        "    if len(work) <= 1:\n",
        "    if True:\n",
        ("tests/test_pipelines.py::test_a_slow_failing_service_holds_up_no_other_pipeline",),
    ),
    Mutant(
        "one pipeline's unforeseen error stops the poll",
        "shared/poll.py",
        "        except Exception as exc:\n            if isinstance(exc, (ServiceError, RetryLater)):",
        "        except (ServiceError, RetryLater) as exc:\n            if True:",
        ("tests/test_pipelines.py::test_an_unforeseen_error_in_one_pipeline_is_recorded_on_it_and_the_others_go_on",),
    ),
    # --- a skewed clock blocks nobody ---------------------------------------------------------------
    Mutant(
        "a lease from a fast clock taken at its word",
        "shared/runs.py",
        "        until = min(until, written_at + length)\n",
        "        pass\n",
        ("tests/test_hostile.py::test_a_lease_written_by_a_clock_five_hours_fast_lapses_on_time",),
    ),
    Mutant(
        "upload ties ordered by the recording instance's clock",
        "shared/runs.py",
        "recorded = (self.recorded_at or self.created_at).astimezone(dt.timezone.utc)",
        "recorded = self.created_at.astimezone(dt.timezone.utc)",
        ("tests/test_hostile.py::test_two_uploads_in_one_second_are_ordered_by_storage_not_by_a_skewed_clock",),
    ),
    Mutant(
        "reads before the table exists fail instead of being empty",
        "shared/store.py",
        """    except ResourceNotFoundError:
        return []


def _slot(""",
        """    except ResourceNotFoundError:
        raise


def _slot(""",
        ("tests/test_operations.py::test_a_listing_on_a_setup_where_nothing_exists_yet_says_so_and_succeeds",),
    ),
    Mutant(
        "reading tools demand the training service's key",
        "shared/settings.py",
        'flat_key = get("BES_API_KEY", "" if configured or for_reading else None)',
        'flat_key = get("BES_API_KEY", "" if configured else None)',
        ("tests/test_operations.py::test_reading_commands_need_storage_not_the_training_services_keys",),
    ),
    Mutant(
        "the CLI shows a traceback for a user error",
        "shared/cli.py",
        "        if debug:\n            raise",
        "        if True:\n            raise",
        ("tests/test_operations.py::test_a_bad_or_missing_settings_file_is_one_line_and_exit_code_2",),
    ),
    Mutant(
        "an option before the sub-command is reset by the sub-command's parser",
        "shared/cli.py",
        "common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)",
        "common = argparse.ArgumentParser(add_help=False)",
        ("tests/test_operations.py::test_options_work_before_and_after_the_sub_command",),
    ),
    Mutant(
        "./dev.sh up overwrites a settings file it did not write",
        "localdev/up.py",
        "        if not ours:\n            raise SetupError",
        "        if False:\n            raise SetupError",
        ("tests/test_operations.py::test_up_never_overwrites_a_settings_file_it_did_not_write",),
    ),
    Mutant(
        "SIGTERM skips the cleanup of Azurite and the emulator",
        "localdev/services.py",
        "previous = signal.signal(signal.SIGTERM, interrupt)",
        "previous = signal.getsignal(signal.SIGTERM)",
        ("tests/test_operations.py::test_up_runs_the_loop_for_the_cli_until_sigterm_and_then_leaves_nothing_behind",),
    ),
    Mutant(
        "RRS answers the docs' DataTable instead of what real services send",
        "emulator/predictive.py",
        'output = {"type": "table", "value":',
        'output = {"type": "DataTable", "value":',
        ("tests/test_azmlclient.py::test_rrs_of_a_classic_endpoint_reads_with_azmlclient",),
    ),
    Mutant(
        "BES refuses a request without Outputs (they are optional)",
        "emulator/bes.py",
        "        if raw_outputs is None:\n            raw_outputs = self._default_outputs(service, job_id)\n",
        "",
        ("tests/test_azmlclient.py::test_a_bes_job_without_outputs_runs_with_azmlclient",),
    ),
    Mutant(
        "a job on storage the emulator cannot reach spends the SDK's retries and fails obscurely",
        "emulator/bes.py",
        "                if not ref.is_local():\n                    raise training.ModuleError(",
        "                if False:\n                    raise training.ModuleError(",
        (
            "tests/test_emulator_bes.py::"
            "test_an_input_on_storage_the_emulator_cannot_reach_fails_the_job_with_details_not_a_500",
        ),
    ),
    Mutant(
        "an ARM GET shows Succeeded while an update is still running",
        "emulator/predictive.py",
        'service.definition["properties"]["provisioningState"] = "Provisioning"',
        "pass",
        (
            "tests/test_emulator_predictive.py::test_a_get_during_an_update_shows_provisioning_and_never_the_storage_key",
        ),
    ),
    Mutant(
        "an ARM GET echoes the storage account key",
        "emulator/predictive.py",
        'cleaned[key] = {k: v for k, v in cleaned[key].items() if k.lower() != "key"}',
        "pass",
        (
            "tests/test_emulator_predictive.py::test_a_get_during_an_update_shows_provisioning_and_never_the_storage_key",
        ),
    ),
    Mutant(
        "an ARM asset_name naming a Module is taken for the trained model",
        "shared/arm.py",
        'if kind.lower() != "resource":',
        "if False:",
        ("tests/test_emulator_predictive.py::test_the_arm_client_refuses_an_asset_name_that_names_a_module",),
    ),
    Mutant(
        "the chart drops the gate's minimum",
        "shared/status.py",
        "{_chart(recent, metric, sfx, pipeline.gate.min)}",
        "{_chart(recent, metric, sfx)}",
        ("tests/test_status.py::test_the_page_is_self_contained_and_marks_deploys_and_rejections",),
    ),
    Mutant(
        "the run page leaves out the run's history",
        "shared/status.py",
        "        for entry in run.history\n    ]",
        "        for entry in run.history[:1]\n    ]",
        ("tests/test_status.py::test_a_run_has_a_readable_page_with_its_json_one_click_away",),
    ),
    Mutant(
        "a v2 job's name is not derived from the run (a retried submission makes a second job)",
        "shared/azureml.py",
        'return f"autopilot-{run.run_id.lower()}-{int(run.resubmissions or 0) + 1}"',
        'return f"autopilot-{time.time_ns()}"',
        ("tests/test_azureml.py::test_a_retried_submission_puts_the_same_job_again_never_a_second",),
    ),
    Mutant(
        "a batch invocation is sent with the ARM token",
        "shared/azureml.py",
        '"submit", "POST", scoring, scope=ML_SCOPE, kind="azureml_inference"',
        '"submit", "POST", scoring, scope=ARM_SCOPE, kind="azureml_inference"',
        ("tests/test_azureml.py::test_a_v2_pipeline_trains_beside_a_bes_one_and_is_judged_on_its_mlflow_metrics",),
    ),
    Mutant(
        "the gate's metric on a child run is not looked for",
        "shared/azureml.py",
        "        if len(carrying) == 1:\n",
        "        if False:\n",
        ("tests/test_azureml.py::test_the_metric_on_a_child_run_is_found_and_a_rejected_run_is_judged_so",),
    ),
    Mutant(
        "a token goes to any host a v2 answer names",
        "shared/azureml.py",
        "            hosts.check(host, kind, self._extra)\n",
        "            pass\n",
        ("tests/test_azureml.py::test_a_token_never_goes_to_an_mlflow_host_the_allow_list_does_not_know",),
    ),
    Mutant(
        "a transient failure reading the metrics fails the run",
        "shared/poll.py",
        "        if exc.transient:\n            return _check_failed(svc, run, actor, utcnow(), exc.as_record())",
        "        if False:\n            return _check_failed(svc, run, actor, utcnow(), exc.as_record())",
        ("tests/test_azureml.py::test_a_transient_mlflow_failure_is_retried_on_the_next_tick",),
    ),
    Mutant(
        "with no deploy target the gate's floor is ignored",
        "shared/gate.py",
        "        if not floor.approved:\n",
        "        if False:\n",
        ("tests/test_gate.py::test_with_no_deploy_target_the_floor_still_judges",),
    ),
    Mutant(
        "a model the gate passes is not registered",
        "shared/poll.py",
        'if verdict.status in (R.APPROVED, R.FINISHED) and hasattr(trainer, "register"):',
        "if False:",
        ("tests/test_azureml.py::test_a_v2_pipeline_trains_beside_a_bes_one_and_is_judged_on_its_mlflow_metrics",),
    ),
    Mutant(
        "a rejected model is registered",
        "shared/poll.py",
        'if verdict.status in (R.APPROVED, R.FINISHED) and hasattr(trainer, "register"):',
        'if verdict.status in (R.APPROVED, R.FINISHED, R.REJECTED) and hasattr(trainer, "register"):',
        ("tests/test_azureml.py::test_the_metric_on_a_child_run_is_found_and_a_rejected_run_is_judged_so",),
    ),
    Mutant(
        "a model version is not derived from the run (a retried registration makes a second version)",
        "shared/azureml.py",
        "        return run.run_id.lower()\n",
        "        return str(time.time_ns())\n",
        ("tests/test_azureml.py::test_a_registration_whose_answer_was_lost_is_the_same_version_again",),
    ),
    Mutant(
        "pre-flight reads the whole blob for its header",
        "shared/preflight.py",
        'head = b"".join(read(0, min(HEAD_BYTES, blob.size)))',
        'head = b"".join(read(0, None))',
        ("tests/test_preflight.py::test_a_1_gib_blobs_pre_flight_reads_a_bounded_number_of_bytes",),
    ),
    Mutant(
        "pre-flight counts the rows of a blob of any size",
        "shared/preflight.py",
        "        if blob.size > COUNT_ROWS_UP_TO:\n",
        "        if False:\n",
        ("tests/test_preflight.py::test_a_1_gib_blobs_pre_flight_reads_a_bounded_number_of_bytes",),
    ),
    Mutant(
        "an upload missing a required column still trains",
        "shared/workflow.py",
        "        if finding.problem:\n",
        "        if False:\n",
        (
            "tests/test_preflight.py::test_a_blob_missing_a_required_column_is_invalid_with_no_job_sent_and_no_slot_taken",
        ),
    ),
    Mutant(
        "an event is sent again after it was delivered",
        "shared/notify.py",
        'if log_entry is not None and log_entry.get("status") == "Delivered":',
        "if False:",
        ("tests/test_notify.py::test_a_duplicate_delivery_of_an_event_sends_nothing_twice",),
    ),
    Mutant(
        "an event is sent for an end the run never reached",
        "shared/notify.py",
        '    if run is None or not any(h.get("to") == status for h in run.history):',
        "    if run is None:",
        ("tests/test_notify.py::test_an_announced_end_that_never_happened_is_dropped_with_a_record",),
    ),
    Mutant(
        "a run's end is written without its event announced",
        "shared/store.py",
        "        if self.announce is not None and run.status != run.read_status:\n",
        "        if False:\n",
        ("tests/test_notify.py::test_each_notable_end_arrives_once_at_both_receivers_with_nothing_secret",),
    ),
    Mutant(
        "the webhook is not signed over its body",
        "shared/notify.py",
        'digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()',
        'digest = hmac.new(secret.encode(), f"{timestamp}.".encode(), hashlib.sha256).hexdigest()',
        ("tests/test_notify.py::test_the_webhook_signature_is_the_documented_hmac",),
    ),
    Mutant(
        "a target with manual approval deploys without one",
        "shared/deploy.py",
        '            if hours is not None and force_reason is None and not current.get("approval"):\n',
        "            if False:\n",
        ("tests/test_approvals.py::test_a_manual_target_waits_while_the_other_deploys_and_approve_releases_it_once",),
    ),
    Mutant(
        "a refusal deploys anyway",
        "shared/deploy.py",
        "    if not approve:\n        _end_waiting(",
        "    if False:\n        _end_waiting(",
        ("tests/test_approvals.py::test_reject_and_expiry_deploy_nothing_and_say_who_or_why",),
    ),
    Mutant(
        "an expired approval can still be waited for",
        "shared/deploy.py",
        "        if state.awaiting_run and state.awaiting_until and state.awaiting_until <= now:\n",
        "        if False:\n",
        ("tests/test_approvals.py::test_reject_and_expiry_deploy_nothing_and_say_who_or_why",),
    ),
    Mutant(
        "an older run waiting for approval is not superseded by a newer one",
        "shared/deploy.py",
        "    for older in replaced:\n",
        "    for older in []:\n",
        ("tests/test_approvals.py::test_a_newer_approved_run_supersedes_an_older_one_still_waiting",),
    ),
    Mutant(
        "a rollback is not announced",
        "shared/deploy.py",
        "        notify.announce_rollback(svc, pipeline, target_name, run_id)\n",
        "        pass\n",
        ("tests/test_notify.py::test_a_rollback_is_announced_and_arrives_once_per_receiver",),
    ),
    # --- safe rollout to online endpoints (issue 12) -------------------------------------------------
    Mutant(
        "rollout failure leaves the traffic it moved",
        "shared/rollout.py",
        'if not self.doc.get("touched"):',
        "if True:",
        ("tests/test_rollout.py::test_probe_errors_during_the_canary_roll_traffic_back_and_keep_the_live_model",),
    ),
    Mutant(
        "canary split does not sum to 100",
        "shared/decisions.py",
        "result[name] += 1",
        "result[name] += 0",
        ("tests/test_decisions.py::test_a_canary_share_leaves_the_rest_in_proportion_and_sums_to_exactly_100",),
    ),
    Mutant(
        "retire deletes the live or the rollback deployment",
        "shared/decisions.py",
        "if d[0].lower() not in {p.lower() for p in protected}",
        "if d",
        (
            "tests/test_decisions.py::test_retire_deletes_the_oldest_beyond_keep_never_a_protected_one",
            "tests/test_rollout.py::test_a_third_model_retires_the_oldest_deployment_but_never_the_live_or_the_rollback_one",
        ),
    ),
    Mutant(
        "probe errors never fail a rollout",
        "shared/decisions.py",
        "return rate, rate <= max_error_rate",
        "return rate, True",
        (
            "tests/test_decisions.py::test_the_live_deployment_and_the_probe_verdict",
            "tests/test_rollout.py::test_probe_errors_during_the_canary_roll_traffic_back_and_keep_the_live_model",
        ),
    ),
    Mutant(
        "endpoint PUT drops the mirror map",
        "shared/online.py",
        'body["properties"] = {**properties, "traffic": dict(traffic), "mirrorTraffic": dict(mirror)}',
        'body["properties"] = {**properties, "traffic": dict(traffic)}',
        ("tests/test_rollout.py::test_a_first_deploy_then_a_new_model_goes_through_shadow_and_canary_to_all_traffic",),
    ),
    Mutant(
        "probes go through live traffic, not straight to the new deployment",
        "shared/online.py",
        'headers={"azureml-model-deployment": deployment},',
        "headers={},",
        ("tests/test_rollout.py::test_a_first_deploy_then_a_new_model_goes_through_shadow_and_canary_to_all_traffic",),
    ),
    Mutant(
        "a queued model never starts",
        "shared/rollout.py",
        'done.append(f"{target.name}: {start_queued(svc, target, state, actor)}")',
        'done.append("queued run left waiting")',
        (
            "tests/test_rollout.py::test_a_newer_model_waits_for_the_rollout_in_progress_and_the_newest_waiting_one_goes_next",
        ),
    ),
    Mutant(
        "a stage may pass its deadline",
        "shared/rollout.py",
        'if doc["stage"] in ACTIVE and self.now > R.parse_iso(doc["deadline"]):',
        'if doc["stage"] in ACTIVE and False:',
        ("tests/test_rollout.py::test_a_stage_past_its_deadline_is_rolled_back",),
    ),
    Mutant(
        "a promoted model is rolled back when retiring fails",
        "shared/rollout.py",
        'if self.doc.get("promoted"):',
        "if False:",
        ("tests/test_rollout.py::test_once_promoted_a_retire_that_keeps_failing_ends_promoted_and_never_rolls_back",),
    ),
    Mutant(
        "history names the wrong replaced run",
        "shared/rollout.py",
        "replaced[:] = [current.live_run, current.live_model]",
        "replaced[:] = [doc['run'], doc['model']]",
        ("tests/test_rollout.py::test_a_first_deploy_then_a_new_model_goes_through_shadow_and_canary_to_all_traffic",),
    ),
    Mutant(
        "a hanging probe holds the tick",
        "shared/rollout.py",
        "if time.monotonic() > budget:",
        "if False:",
        ("tests/test_rollout.py::test_a_probe_that_hangs_is_bounded_and_its_unscored_rows_count_as_errors",),
    ),
    Mutant(
        "an Event Grid nudge checks any active run, not the event's job's",
        "shared/mlevents.py",
        "if run is None or run.job_id != parsed.job:",
        "if run is None:",
        ("tests/test_mlevents.py::test_an_event_for_another_job_leaves_a_running_job_to_the_timer",),
    ),
]


def files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [f for f in listed if (ROOT / f).is_file()]


def scratch_copy(into: Path, tracked: list[str]) -> None:
    for f in tracked:
        (into / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, into / f)
    (into / "node_modules").symlink_to(ROOT / "node_modules")


def mutate(copy: Path, mutant: Mutant) -> None:
    path = copy / mutant.file
    text = path.read_text()
    found = text.count(mutant.find)
    if found != mutant.count:
        raise SystemExit(f"mutant {mutant.name!r} no longer applies: its text occurs {found} times in {mutant.file}")
    path.write_text(text.replace(mutant.find, mutant.replace))


def pytest(copy: Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=copy,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {TIMEOUT_SECONDS}s", time.monotonic() - started
    failure = next((line for line in result.stdout.splitlines() if line.startswith(("E ", "FAILED", "ERROR"))), "")
    return result.returncode, failure or result.stdout[-300:], time.monotonic() - started


def check(mutant: Mutant, tracked: list[str]) -> tuple[Mutant, bool, str, float]:
    with tempfile.TemporaryDirectory(prefix="mutant-") as scratch:
        copy = Path(scratch)
        scratch_copy(copy, tracked)
        mutate(copy, mutant)
        code, failure, took = pytest(copy, mutant.tests)
    return mutant, code != 0, failure, took


def main() -> int:
    words = sys.argv[1:]
    chosen = [m for m in MUTANTS if not words or any(word in m.name for word in words)]
    if not chosen:
        print(f"no mutant's name contains {' or '.join(words)}")
        return 1
    tracked = files()
    # The tests must pass on the unmutated code, or "killed" would mean nothing.
    with tempfile.TemporaryDirectory(prefix="mutant-baseline-") as scratch:
        copy = Path(scratch)
        scratch_copy(copy, tracked)
        for mutant in chosen:
            mutate(copy, Mutant(mutant.name, mutant.file, mutant.find, mutant.find, (), mutant.count))
        baseline = sorted({t for m in chosen for t in m.tests})
        code, failure, took = pytest(copy, tuple(baseline))
    if code != 0:
        print(f"the mutants' tests fail without any mutant ({took:.0f}s): {failure}")
        return 1
    print(f"baseline: {len(baseline)} tests pass unmutated ({took:.0f}s)")
    survivors = []
    with ThreadPoolExecutor(max_workers=int(os.environ.get("MUTANT_WORKERS", "2"))) as pool:
        for mutant, killed, failure, took in pool.map(lambda m: check(m, tracked), chosen):
            if killed:
                print(f"killed    {mutant.name} ({took:.0f}s): {failure[:150]}")
            else:
                survivors.append(mutant.name)
                print(f"SURVIVED  {mutant.name} ({took:.0f}s)")
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} mutants killed")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
