"""Checks of infra/ that run without Azure or the Bicep compiler (neither can be had here): module
wiring, parameters, role ids, and that the app settings the templates deploy are valid for the app."""

import json
import re
from pathlib import Path

import pytest
import yaml

import function_app
from localdev.runner import index
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
BICEP = sorted(INFRA.rglob("*.bicep"))
# Built-in role definition ids (Azure RBAC documentation).
BUILT_IN_ROLES = {
    "storageBlobDataOwner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "storageQueueDataContributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "storageTableDataContributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "keyVaultSecretsUser": "4633458b-17de-408a-b874-0445c86b69e6",
    "monitoringMetricsPublisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}


def without_strings_and_comments(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"'(?:[^'\\]|\\.)*'", "''", text)


def params_of(path: Path) -> dict[str, bool]:
    """Parameter name -> whether it has a default."""
    found = {}
    for match in re.finditer(r"^param (\w+) [\w.]+( =)?", path.read_text(), re.MULTILINE):
        found[match.group(1)] = bool(match.group(2))
    return found


def modules_of(path: Path) -> list[tuple[str, Path, set[str]]]:
    text = path.read_text()
    modules = []
    for match in re.finditer(r"^module (\w+) '([^']+)'.*?\n}", text, re.MULTILINE | re.DOTALL):
        body = match.group(0)
        block = re.search(r"params: \{(.*?)\n  \}", body, re.DOTALL)
        passed = set(re.findall(r"^\s{4}(\w+):", block.group(1), re.MULTILINE)) if block else set()
        modules.append((match.group(1), path.parent / match.group(2), passed))
    return modules


@pytest.mark.parametrize("path", BICEP, ids=lambda p: str(p.relative_to(INFRA)))
def test_brackets_balance(path):
    text = without_strings_and_comments(path.read_text())
    for opening, closing in ("{}", "[]", "()"):
        assert text.count(opening) == text.count(closing), f"{opening}{closing} unbalanced in {path.name}"


def test_every_module_exists_and_gets_exactly_its_parameters():
    modules = modules_of(INFRA / "main.bicep")
    assert len(modules) >= 7
    for name, path, passed in modules:
        assert path.exists(), name
        declared = params_of(path)
        assert passed <= set(declared), f"{name} passes unknown {passed - set(declared)}"
        required = {p for p, has_default in declared.items() if not has_default}
        assert required <= passed, f"{name} misses {required - passed}"


def test_the_azd_parameters_file_matches_main():
    declared = params_of(INFRA / "main.bicep")
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(given) <= set(declared)
    assert {p for p, has_default in declared.items() if not has_default} <= set(given)


def test_roles_are_the_documented_built_in_ones_and_the_ml_role_is_minimal():
    rbac = (INFRA / "app" / "rbac.bicep").read_text()
    assert dict(re.findall(r"^\s+(\w+): '([0-9a-f-]{36})'", rbac, re.MULTILINE)) == BUILT_IN_ROLES
    ml = (INFRA / "app" / "ml-webservice-role.bicep").read_text()
    assert re.findall(r"'(Microsoft\.MachineLearning/[^']+)'", ml) == [
        "Microsoft.MachineLearning/webServices/read",
        "Microsoft.MachineLearning/webServices/write",
        "Microsoft.MachineLearning/locations/operationsStatus/read",
    ]


def test_the_v2_workspace_role_is_the_built_in_azureml_data_scientist_on_that_workspace_only():
    role = (INFRA / "app" / "ml-workspace-role.bicep").read_text()
    assert re.findall(r"'([0-9a-f-]{36})'", role) == ["f6c7c914-8db3-469d-8ca1-694a8f32e121"]  # AzureML Data Scientist
    assert "scope: workspace" in role and "existing" in role
    main = (INFRA / "main.bicep").read_text()
    assert "module mlWorkspaceRole 'app/ml-workspace-role.bicep' = if (!empty(mlWorkspaceId))" in main


def test_the_events_topic_takes_cloudevents_without_keys_and_only_the_app_may_send():
    topic = (INFRA / "app" / "events-topic.bicep").read_text()
    assert re.findall(r"'([0-9a-f-]{36})'", topic) == ["d5a91429-5739-47e2-a06b-3470a27159e7"]  # EventGrid Data Sender
    assert "inputSchema: 'CloudEventSchemaV1_0'" in topic and "disableLocalAuth: true" in topic
    function = (INFRA / "app" / "function.bicep").read_text()
    secret = "NOTIFY_WEBHOOK_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/NOTIFY-WEBHOOK-SECRET)'"
    assert secret in function


def deployed_settings() -> dict[str, str]:
    """The app settings function.bicep deploys, with Bicep expressions replaced by plausible values."""
    text = (INFRA / "app" / "function.bicep").read_text()
    block = re.search(r"var settings = union\(\{(.*?)\n\}", text, re.DOTALL).group(1)
    samples = {
        "storageAccountName": "stabc",
        "identityClientId": "00000000-0000-0000-0000-000000000001",
        "applicationInsightsConnectionString": "InstrumentationKey=x",
        "keyVaultUri": "https://kv.vault.azure.net/",
        "besApiKeySecretUri": "https://kv.vault.azure.net/secrets/BES-API-KEY/1",
        "besJobsUrl": "https://ussouthcentral.services.azureml.net/workspaces/w/services/s/jobs",
        "deployTargets": "[]",
    }
    settings = {}
    for key, value in re.findall(r"^\s+(\w+): (.+)$", block, re.MULTILINE):
        value = samples.get(value, value)
        value = re.sub(r"\$\{(\w+)\}", lambda m: samples[m.group(1)], value).strip("'")
        settings[key] = value
    return settings


def test_the_deployed_settings_are_identity_based_and_secret_free():
    settings = deployed_settings()
    assert "AzureWebJobsStorage" not in settings and settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["BES_API_KEY"].startswith("@Microsoft.KeyVault(SecretUri=")
    assert not any("AccountKey" in v or "sig=" in v for v in settings.values())
    assert settings["TRAINING_BLOB_SOURCE"] == "EventGrid"  # Flex Consumption


def test_the_deployed_settings_resolve_every_binding_expression_and_validate():
    settings = deployed_settings()
    used = set()
    for function in index(function_app.app):
        used |= set(re.findall(r"%(\w+)%", function.get_function_json()))
    assert used and used <= set(settings), f"not deployed: {used - set(settings)}"
    resolved = {**settings, "BES_API_KEY": "as-resolved-from-key-vault"}  # the platform resolves references
    parsed = Settings.from_env(resolved)
    assert parsed.storage_identity.blob_uri == "https://stabc.blob.core.windows.net"


def test_azure_yaml_deploys_this_folder_with_the_post_deploy_hook():
    spec = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert spec["services"]["app"] == {"project": ".", "language": "python", "host": "function"}
    hook = ROOT / spec["hooks"]["postdeploy"]["posix"]["run"]
    assert hook.exists() and hook.stat().st_mode & 0o111


def test_the_workspace_events_reach_the_nudge_function_as_cloudevents_of_the_two_run_types():
    topic = (INFRA / "app" / "ml-events.bicep").read_text()
    assert "topicType: 'Microsoft.MachineLearningServices.Workspaces'" in topic and "source: workspace.id" in topic
    main = (INFRA / "main.bicep").read_text()
    assert "module mlEvents 'app/ml-events.bicep' = if (!empty(mlWorkspaceId))" in main
    script = (ROOT / "scripts" / "post-up.sh").read_text()
    assert '--endpoint "$app_id/functions/nudge_on_ml_event"' in script
    assert "--event-delivery-schema cloudeventschemav1_0" in script
    for kind in ("RunCompleted", "RunStatusChanged"):
        assert f"Microsoft.MachineLearningServices.{kind}" in script
    import function_app
    from localdev.runner import index

    assert "nudge_on_ml_event" in {f.get_function_name() for f in index(function_app.app)}
