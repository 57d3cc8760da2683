"""Settings are validated once, with one clear message naming the bad setting."""

import pytest

from shared.settings import AZURITE_CONNECTION_STRING, Settings, SettingsError, blob_trigger_source, jobs_url

JOBS = "https://ussouthcentral.services.azureml.net/workspaces/0a1b/services/f9e8/jobs"
BASE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "BES_JOBS_URL": JOBS, "BES_API_KEY": "fake-key-123456"}


def test_defaults_apply_when_only_required_settings_are_given():
    s = Settings.from_env(BASE)
    assert s.storage_connection == AZURITE_CONNECTION_STRING
    assert (s.training_container, s.models_container, s.runs_table) == ("training-data", "models", "retrainingruns")
    assert (s.bes_input_name, s.bes_model_output, s.bes_evaluation_output) == ("input1", "output1", "output2")
    assert s.bes_global_parameters == {}
    assert s.pipeline == "default"


def test_the_api_key_is_not_in_the_settings_repr():
    assert "fake-key-123456" not in repr(Settings.from_env(BASE))


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("BES_API_KEY", None, "is required"),
        ("BES_JOBS_URL", "", "is required"),
        ("AzureWebJobsStorage", "not-a-connection-string", "connection string"),
        ("BES_JOBS_URL", "ftp://x/jobs", "http(s) URL"),
        ("BES_JOBS_URL", "http://ussouthcentral.services.azureml.net/workspaces/a/services/b/jobs", "https"),
        ("BES_JOBS_URL", "https://host/workspaces/a/services/b/execute", ".../jobs URL"),
        ("BES_JOBS_URL", JOBS + "?api-version=1.0", "unexpected query"),
        ("TRAINING_CONTAINER", "Bad_Name", "not a valid container name"),
        ("MODELS_CONTAINER", "training-data", "must differ"),
        ("BES_GLOBAL_PARAMETERS", "{not json", "not valid JSON"),
        ("BES_GLOBAL_PARAMETERS", "[1, 2]", "JSON object"),
        ("BES_GLOBAL_PARAMETERS", '{"a": {"nested": 1}}', "JSON object"),
        ("RUNS_TABLE", "runs-table", "not a valid table name"),
        ("JOB_TIMEOUT_MINUTES", "soon", "not a whole number"),
        ("JOB_TIMEOUT_MINUTES", "0", "outside"),
        ("MAX_ATTEMPTS", "99", "outside"),
        ("PIPELINE_NAME", "My Pipeline", "lowercase"),
        ("TRAINING_BLOB_SOURCE", "Polling", "not one of"),
        ("BES_EVALUATION_OUTPUT", "output1", "must differ"),
        ("BES_API_KEY", "@Microsoft.KeyVault(SecretUri=https://v.vault.azure.net/secrets/k/)", "unresolved Key Vault"),
        ("HTTP_TIMEOUT_SECONDS", "0", "outside"),
    ],
)
def test_a_bad_setting_is_named_in_the_error(name, value, expected):
    env = dict(BASE)
    if value is None:
        env.pop(name)
    else:
        env[name] = value
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert caught.value.setting == name
    assert str(caught.value).startswith(f"Setting {name}:")
    assert expected in str(caught.value)


def test_jobs_url_accepts_the_adf_form_with_api_version_and_plain_http_on_loopback():
    assert jobs_url(JOBS + "?api-version=2.0") == JOBS
    assert jobs_url(JOBS + "/") == JOBS
    assert jobs_url("http://127.0.0.1:8900/workspaces/a/services/b/jobs").startswith("http://127.0.0.1")
    assert jobs_url("http://localhost:8900/workspaces/a/services/b/jobs").startswith("http://localhost")


def test_global_parameters_are_parsed():
    s = Settings.from_env({**BASE, "BES_GLOBAL_PARAMETERS": '{"Random seed": 12345, "Mode": "fast"}'})
    assert s.bes_global_parameters == {"Random seed": 12345, "Mode": "fast"}


def test_blob_trigger_source_defaults_to_event_grid_and_can_be_switched_for_local_hosts():
    assert blob_trigger_source({}) == "EventGrid"
    assert blob_trigger_source({"TRAINING_BLOB_SOURCE": "LogsAndContainerScan"}) == "LogsAndContainerScan"
