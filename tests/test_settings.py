"""Settings are validated once, with one clear message naming the bad setting."""

import re

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
        ("BES_JOBS_URL", "https://uswestcentral.services.azureml.net/workspaces/a/services/b/execute", ".../jobs URL"),
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


CLASSIC = {
    "name": "prod",
    "kind": "classic",
    "api_key": "fake-key-123456",
    "resource_name": "M [trained model]",
    "endpoint_url": "https://management.azureml.net/workspaces/ws/webservices/svc/endpoints/retrain",
}
ARM = {
    "name": "arm-prod",
    "kind": "arm",
    "resource_id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearning/webServices/svc",
}


def test_deploy_targets_are_parsed_with_their_defaults():
    import json

    s = Settings.from_env({**BASE, "DEPLOY_TARGETS": json.dumps([CLASSIC, ARM])})
    classic, arm = s.targets
    assert (classic.kind, classic.resource_name, classic.api_key) == ("classic", "M [trained model]", "fake-key-123456")
    assert (arm.management_url, arm.api_version, arm.asset_name) == ("https://management.azure.com", "2017-01-01", None)
    assert s.target("arm-prod") is arm and s.target("nope") is None
    assert "fake-key-123456" not in repr(s)


def test_a_classic_key_can_come_from_another_setting():
    import json

    target = {k: v for k, v in CLASSIC.items() if k != "api_key"} | {"api_key_setting": "PROD_KEY"}
    s = Settings.from_env({**BASE, "DEPLOY_TARGETS": json.dumps([target]), "PROD_KEY": "from-key-vault-1234"})
    assert s.targets[0].api_key == "from-key-vault-1234"
    with pytest.raises(SettingsError, match="PROD_KEY"):
        Settings.from_env({**BASE, "DEPLOY_TARGETS": json.dumps([target])})


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ("{}", "JSON list"),
        ("[1]", "not an object"),
        ('[{"kind": "classic"}]', "needs a name"),
        ([{**CLASSIC, "kind": "aks"}], "unknown kind"),
        ([CLASSIC, CLASSIC], "named twice"),
        ([{**CLASSIC, "endpointUrl": "x"}], "unknown field"),
        ([{k: v for k, v in CLASSIC.items() if k != "resource_name"}], "missing resource_name"),
        (
            [{**CLASSIC, "endpoint_url": "http://management.azureml.net/workspaces/w/webservices/s/endpoints/e"}],
            "https",
        ),
        ([{**CLASSIC, "endpoint_url": "https://management.azureml.net/workspaces/w/webservices/s"}], "endpoints"),
        ([{**ARM, "resource_id": "/subscriptions/s/webServices/x"}], "resource_id"),
        ([{**ARM, "api_version": "2020-01-01"}], "api_version"),
        ([{**CLASSIC, "api_key": "@Microsoft.KeyVault(SecretUri=https://v/secrets/k/)"}], "Key Vault"),
    ],
)
def test_bad_deploy_targets_are_refused_with_a_reason(targets, expected):
    import json

    raw = targets if isinstance(targets, str) else json.dumps(targets)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, "DEPLOY_TARGETS": raw})
    assert caught.value.setting == "DEPLOY_TARGETS"
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("POLL_SCHEDULE", "*/5 * * * *"),
        ("COMMANDS_QUEUE", "Commands"),
        ("COMMANDS_QUEUE", "x" * 57),
        ("GATE_MIN", "high"),
        ("RESUBMIT_FAILED_JOBS", "maybe"),
    ],
)
def test_poll_gate_and_queue_settings_are_validated(name, value):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, name: value})
    assert caught.value.setting == name


def test_the_documented_sample_settings_are_valid():
    import json
    from pathlib import Path

    values = json.loads((Path(__file__).parent.parent / "local.settings.sample.json").read_text())["Values"]
    settings = Settings.from_env(values)
    assert [t.kind for t in settings.targets] == ["classic", "arm"]
    assert settings.targets[0].api_key == values["BES_API_KEY"]  # by api_key_setting


ENDPOINT_PATH = "/workspaces/w/webservices/s/endpoints/e"


@pytest.mark.parametrize(
    ("setting", "url", "why"),
    [
        # the instance metadata service would hand a token to whoever asks it for one
        ("BES_JOBS_URL", "https://169.254.169.254/workspaces/a/services/b/jobs", "link-local"),
        ("BES_JOBS_URL", "https://10.1.2.3/workspaces/a/services/b/jobs", "private"),
        ("BES_JOBS_URL", "https://[fe80::1]/workspaces/a/services/b/jobs", "link-local"),
        ("BES_JOBS_URL", "https://collector.example.com/workspaces/a/services/b/jobs", "not a known Azure ML host"),
        # a compute instance is a user's machine under azureml.net, not a runtime host
        ("BES_JOBS_URL", "https://ci1.eastus.instances.azureml.net/workspaces/a/services/b/jobs", "not a known"),
        ("BES_JOBS_URL", "https://management.azure.com/workspaces/a/services/b/jobs", "for bes calls"),
        ("BES_JOBS_URL", "https://u:p@ussouthcentral.services.azureml.net/workspaces/a/services/b/jobs", "credentials"),
        ("DEPLOY_TARGETS", f"https://ussouthcentral.services.azureml.net{ENDPOINT_PATH}", "for classic calls"),
        ("DEPLOY_TARGETS", f"https://169.254.169.254{ENDPOINT_PATH}", "link-local"),
        ("DEPLOY_TARGETS", "https://169.254.169.254", "link-local"),
        ("DEPLOY_TARGETS", "https://management.evil.example", "for arm calls"),
    ],
)
def test_credentials_never_go_to_a_host_outside_azure_ml_or_to_an_ip_address(setting, url, why):
    import json

    env = dict(BASE)
    if setting == "BES_JOBS_URL":
        env["BES_JOBS_URL"] = url
    elif url.endswith(ENDPOINT_PATH):
        env["DEPLOY_TARGETS"] = json.dumps([{**CLASSIC, "endpoint_url": url}])
    else:
        env["DEPLOY_TARGETS"] = json.dumps([{**ARM, "management_url": url}])
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert caught.value.setting == setting
    assert why in str(caught.value)


@pytest.mark.parametrize(
    "jobs",
    [
        "https://germanycentral.services.azureml.de/workspaces/a/services/b/jobs",
        "https://chinaeast.services.azureml.cn/workspaces/a/services/b/jobs",
        "https://USSOUTHCENTRAL.services.azureml.net/workspaces/a/services/b/jobs",
        "http://127.0.0.1:8900/workspaces/a/services/b/jobs",
        "http://[::1]:8900/workspaces/a/services/b/jobs",
    ],
)
def test_the_classic_hosts_of_every_cloud_and_loopback_are_accepted(jobs):
    assert Settings.from_env({**BASE, "BES_JOBS_URL": jobs}).bes_jobs_url.lower() == jobs.lower()


def test_sovereign_arm_and_management_hosts_are_accepted():
    import json

    targets = [
        {**CLASSIC, "endpoint_url": f"https://germanycentral.management.azureml.de{ENDPOINT_PATH}"},
        *(
            {**ARM, "name": f"arm-{i}", "management_url": url}
            for i, url in enumerate(("https://management.usgovcloudapi.net", "https://management.chinacloudapi.cn"))
        ),
    ]
    s = Settings.from_env({**BASE, "DEPLOY_TARGETS": json.dumps(targets)})
    assert [t.name for t in s.targets] == ["prod", "arm-0", "arm-1"]


def test_another_host_is_accepted_only_when_allow_listed_by_name():
    proxy = "https://ml-proxy.contoso.com/workspaces/a/services/b/jobs"
    with pytest.raises(SettingsError, match="EXTRA_ALLOWED_HOSTS"):
        Settings.from_env({**BASE, "BES_JOBS_URL": proxy})
    assert Settings.from_env({**BASE, "BES_JOBS_URL": proxy, "EXTRA_ALLOWED_HOSTS": "*.contoso.com"}).bes_jobs_url
    listed = {**BASE, "BES_JOBS_URL": proxy, "EXTRA_ALLOWED_HOSTS": "ml-proxy.contoso.com, other.example.org"}
    assert Settings.from_env(listed).extra_allowed_hosts == ("ml-proxy.contoso.com", "other.example.org")
    # an address is never allowed, listed or not
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, "EXTRA_ALLOWED_HOSTS": "169.254.169.254"})
    assert caught.value.setting == "EXTRA_ALLOWED_HOSTS" and "IP address" in str(caught.value)
    metadata = {**BASE, "BES_JOBS_URL": "https://169.254.169.254/workspaces/a/services/b/jobs"}
    with pytest.raises(SettingsError, match="link-local"):
        Settings.from_env({**metadata, "EXTRA_ALLOWED_HOSTS": "*.contoso.com"})


def test_a_trailing_newline_does_not_pass_a_name_pattern():
    import json

    with pytest.raises(SettingsError, match="needs a name"):
        Settings.from_env({**BASE, "DEPLOY_TARGETS": json.dumps([{**CLASSIC, "name": "prod\n"}])})


def pipelines_env(pipelines, **extra):
    import json

    env = {k: v for k, v in BASE.items() if not k.startswith("BES_")}
    targets = [CLASSIC, ARM, {**ARM, "name": "arm-2"}]
    return {
        **env,
        "PIPELINES": json.dumps(pipelines),
        "DEPLOY_TARGETS": json.dumps(targets),
        "KEY_A": "key-a-123456",
        **extra,
    }


def pipeline(name="census", prefix="census/", **fields):
    return {
        "name": name,
        "blob_prefix": prefix,
        "trainer": {"kind": "bes", "jobs_url": JOBS, "api_key_setting": "KEY_A"},
        **fields,
    }


def test_pipelines_are_parsed_with_defaults_from_the_flat_settings():
    env = pipelines_env(
        [pipeline("churn", ""), pipeline(targets=["prod"], gate={"metric": "Accuracy"}, schedule="0 0 3 * * *")],
        BES_INPUT_NAME="data",
        GATE_MIN="0.7",
    )
    s = Settings.from_env(env)
    churn, census = s.pipelines
    assert (census.name, census.blob_prefix, census.targets, census.schedule) == (
        "census",
        "census/",
        ("prod",),
        "0 0 3 * * *",
    )
    assert (census.trainer.kind, census.trainer.api_key, census.trainer.input_name) == ("bes", "key-a-123456", "data")
    assert (census.gate.metric, census.gate.min) == ("Accuracy", 0.7)  # the flat GATE_MIN is the default
    assert (churn.targets, churn.gate.metric) == ((), "AUC")
    # the longest prefix wins; "" takes what no other prefix claims
    assert s.route("census/2026.csv") is census and s.route("other.csv") is churn
    assert s.bes_jobs_url is None and "key-a-123456" not in repr(s)


def test_without_pipelines_the_flat_settings_are_the_one_pipeline():
    s = Settings.from_env(BASE)
    [only] = s.pipelines
    assert (only.name, only.blob_prefix, only.trainer.jobs_url, only.gate.metric) == ("default", "", JOBS, "AUC")
    assert s.route("anything/at/all.csv") is only


@pytest.mark.parametrize(
    ("pipelines", "setting", "expected"),
    [
        ("{}", "PIPELINES", "non-empty JSON list"),
        ([{"name": "Census"}], "PIPELINES", "pipeline #1 needs a name of 1-40 lowercase"),
        ([pipeline(extra=1)], "PIPELINES", "pipeline 'census': has unknown field(s) extra"),
        ([pipeline(), pipeline()], "PIPELINES", "pipeline 'census' is named twice"),
        (
            [pipeline(), pipeline("churn")],
            "PIPELINES",
            "pipeline 'churn' blob_prefix: 'census/' is also pipeline 'census''s",
        ),
        ([pipeline(prefix="../x/")], "PIPELINES", "pipeline 'census' blob_prefix: '../x/' is not a blob name prefix"),
        ([pipeline(prefix=7)], "PIPELINES", "pipeline 'census' blob_prefix: must be a string, not int"),
        (
            [pipeline(trainer={"kind": "sagemaker"})],
            "PIPELINES",
            "pipeline 'census' trainer: must be an object whose kind is one of bes, azureml",
        ),
        ([pipeline(trainer={"kind": "bes"})], "PIPELINES", "pipeline 'census' trainer: is missing jobs_url"),
        (
            [pipeline(trainer={"kind": "bes", "jobs_url": "https://10.0.0.1/w/s/jobs", "api_key": "k" * 12})],
            "PIPELINES",
            "pipeline 'census' trainer jobs_url: 10.0.0.1 is an IP address",
        ),
        (
            [pipeline(trainer={"kind": "bes", "jobs_url": JOBS})],
            "PIPELINES",
            "pipeline 'census' trainer: needs api_key or api_key_setting",
        ),
        (
            [pipeline(trainer={"kind": "bes", "jobs_url": JOBS, "api_key_setting": "NOPE"})],
            "NOPE",
            "is required by PIPELINES",
        ),
        (
            [pipeline(targets=["nope"])],
            "PIPELINES",
            "pipeline 'census' targets: 'nope' is not a target of DEPLOY_TARGETS",
        ),
        (
            [pipeline(targets=["prod"]), pipeline("churn", "churn/", targets=["prod"])],
            "PIPELINES",
            "pipeline 'churn' targets: 'prod' is pipeline 'census''s already: a target serves one model",
        ),
        ([pipeline(gate={"min": "high"})], "PIPELINES", "pipeline 'census' gate min: must be a number, not str"),
        ([pipeline(gate={"minimum": 1})], "PIPELINES", "pipeline 'census' gate: has unknown field(s) minimum"),
        ([pipeline(schedule="0 3 * * *")], "PIPELINES", "pipeline 'census' schedule: '0 3 * * *' is not an NCRONTAB"),
    ],
)
def test_every_pipeline_problem_is_caught_at_start_naming_the_pipeline_and_the_field(pipelines, setting, expected):
    import json

    raw = pipelines if isinstance(pipelines, str) else json.dumps(pipelines)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**pipelines_env([]), "PIPELINES": raw})
    assert caught.value.setting == setting
    assert expected in str(caught.value), str(caught.value)


def test_the_single_pipeline_settings_are_refused_beside_pipelines():
    for name, value in (("PIPELINE_NAME", "census"), ("RETRAIN_SCHEDULE", "0 0 3 * * *")):
        with pytest.raises(SettingsError, match="with PIPELINES, set it on each pipeline") as caught:
            Settings.from_env(pipelines_env([pipeline()], **{name: value}))
        assert caught.value.setting == name


def test_a_target_field_of_the_wrong_type_is_named():
    import json

    with pytest.raises(SettingsError, match="target 'prod' resource_name: must be a string, not int"):
        Settings.from_env({**BASE, "DEPLOY_TARGETS": json.dumps([{**CLASSIC, "resource_name": 5}])})


def test_each_pipeline_schedule_is_a_timer_of_its_own():
    import json

    from shared.settings import schedules

    env = pipelines_env([pipeline(schedule="0 0 3 * * *"), pipeline("churn-eu", "churn/", schedule="bad")])
    assert schedules(env) == [("retrain_on_schedule_census", "census", "0 0 3 * * *")]  # a bad one: reported at start
    assert schedules({"RETRAIN_SCHEDULE": "0 0 4 * * *"}) == [("retrain_on_schedule", None, "0 0 4 * * *")]
    assert schedules({"PIPELINES": "{not json"}) == [] and schedules({}) == []
    assert json.loads(json.dumps(schedules(env)))  # plain values: they become binding metadata


def test_the_poll_schedule_is_not_taken_for_the_retrain_schedule():
    settings = Settings.from_env({**BASE, "POLL_SCHEDULE": "*/5 * * * * *", "RETRAIN_SCHEDULE": "0 0 3 * * *"})
    assert (settings.poll_schedule, settings.retrain_schedule) == ("*/5 * * * * *", "0 0 3 * * *")


WORKSPACE = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/autopilot-ws"


def v2(**fields):
    trainer = {"kind": "azureml", "workspace": WORKSPACE, "datastore": "training", "model_name": "census"}
    return pipeline(trainer={**trainer, **fields})


def test_an_azureml_trainer_is_parsed_exactly_with_its_defaults():
    s = Settings.from_env(pipelines_env([v2(job={"command": "python train.py", "environmentId": "azureml:env:1"})]))
    [census] = s.pipelines
    t = census.trainer
    assert (t.kind, t.workspace, t.datastore, t.model_name, t.batch_endpoint) == (
        "azureml", WORKSPACE, "training", "census", None,
    )  # fmt: skip
    assert (t.input_name, t.model_output, t.model_type, t.metrics_run, t.api_version, t.management_url) == (
        "training_data", "model", "mlflow_model", "auto", "2025-12-01", "https://management.azure.com",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("trainer", "expected"),
    [
        ({"batch_endpoint": "b", "extra": 1}, "trainer: has unknown field(s) extra"),
        ({}, "trainer: needs exactly one of batch_endpoint (a training pipeline) and job (a Command job)"),
        ({"batch_endpoint": "b", "job": {}}, "trainer: needs exactly one of batch_endpoint"),
        ({"job": {"command": "x"}}, "trainer job environmentId: is required for a Command job"),
        (
            {"job": {"jobType": "Pipeline", "command": "x", "environmentId": "e"}},
            "trainer job jobType: must be Command",
        ),
        (
            {"batch_endpoint": "b", "workspace": "/subscriptions/s/workspaces/w"},
            "trainer workspace: must be a workspace's ARM id",
        ),
        ({"batch_endpoint": "b", "metrics_run": "child"}, "trainer metrics_run: must be 'auto'"),
        ({"batch_endpoint": "b", "management_url": "https://evil.example.com"}, "trainer management_url"),
        ({"batch_endpoint": "b", "api_version": "latest"}, "trainer api_version: 'latest' is not an api-version"),
        ({"batch_endpoint": "b", "model_name": "bad name"}, "trainer model_name: 'bad name' is not a valid name"),
    ],
)
def test_an_azureml_trainer_problem_names_the_pipeline_and_the_field(trainer, expected):
    with pytest.raises(SettingsError, match=re.escape(f"pipeline 'census' {expected}")):
        Settings.from_env(pipelines_env([v2(**trainer)]))


ONLINE = {"name": "online", "kind": "azureml-online", "endpoint": f"{WORKSPACE}/onlineEndpoints/census-online"}
JOB_FIELDS = {"job": {"command": "python train.py", "environmentId": "azureml:env:1"}}


def online_env(target: dict, trainer: dict | None = None, **fields):
    import json

    census = {**v2(**(trainer or JOB_FIELDS)), "targets": ["online"], **fields}
    env = pipelines_env([census])
    return {**env, "DEPLOY_TARGETS": json.dumps([target])}


def test_an_online_endpoint_target_is_parsed_exactly_with_its_defaults():
    [target] = Settings.from_env(online_env(ONLINE)).targets
    assert (target.kind, target.endpoint, target.keep_deployments, target.api_version) == (
        "azureml-online", ONLINE["endpoint"], 2, "2025-12-01",
    )  # fmt: skip
    r = target.rollout
    assert (r.mirror_percent, r.mirror_minutes, r.canary_percent, r.bake_minutes, r.probe_rows) == (0, 0, 10, 10, 20)
    assert r.max_probe_error_rate == 0.0 and target.workspace == WORKSPACE and target.staged
    custom = {**ONLINE, "rollout": {"mirror_percent": 50, "bake_minutes": 0.5, "max_probe_error_rate": 0.1}}
    [target] = Settings.from_env(online_env(custom)).targets
    assert (target.rollout.mirror_percent, target.rollout.bake_minutes, target.rollout.canary_percent) == (50, 0.5, 10)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"extra": 1}, "has unknown field(s) extra"),
        ({"endpoint": f"{WORKSPACE}/batchEndpoints/x"}, "endpoint: must be an online endpoint's ARM id"),
        ({"rollout": {"mirror_percent": 51}}, "rollout mirror_percent: must be a whole number from 0 to 50"),
        ({"rollout": {"canary_percent": 100}}, "rollout canary_percent: must be a whole number from 0 to 99"),
        ({"rollout": {"canary_percent": 10.5}}, "rollout canary_percent: must be a whole number"),
        ({"rollout": {"bake_minutes": -1}}, "rollout bake_minutes: must be a number from 0 to 1440"),
        ({"rollout": {"probe_rows": True}}, "rollout probe_rows: must be a whole number"),
        ({"rollout": {"max_probe_error_rate": 2}}, "rollout max_probe_error_rate: must be a number from 0 to 1"),
        ({"rollout": {"shadow": 1}}, "rollout: has unknown field(s) shadow"),
        ({"rollout": []}, "rollout: must be an object"),
        ({"keep_deployments": 1}, "keep_deployments: must be a whole number from 2 to 20"),
        ({"management_url": "https://evil.example.com"}, "management_url"),
    ],
)
def test_an_online_target_problem_names_the_target_and_the_field(fields, expected):
    with pytest.raises(SettingsError, match=re.escape(expected)):
        Settings.from_env(online_env({**ONLINE, **fields}))


def test_an_online_target_serves_only_an_azureml_trainers_models_of_its_own_workspace():
    other = WORKSPACE.replace("autopilot-ws", "other-ws")
    with pytest.raises(SettingsError, match=r"is in workspace .*other-ws, the trainer registers in .*autopilot-ws"):
        Settings.from_env(online_env({**ONLINE, "endpoint": f"{other}/onlineEndpoints/census-online"}))
    import json

    env = pipelines_env([pipeline(targets=["online"])])  # a BES pipeline
    with pytest.raises(SettingsError, match="'online' is an azureml-online target: it serves models an azureml"):
        Settings.from_env({**env, "DEPLOY_TARGETS": json.dumps([ONLINE])})
