"""The online endpoint target's pure parts: the bodies it PUTs and the names it derives. No service."""

import re

from shared import online

ENDPOINT = {
    "id": "/subscriptions/s/.../onlineEndpoints/ep",
    "name": "ep",
    "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
    "location": "westus",
    "kind": "Managed",
    "tags": {"team": "risk"},
    "identity": {
        "type": "SystemAssigned,UserAssigned",
        "principalId": "p",
        "tenantId": "t",
        "userAssignedIdentities": {"/subscriptions/s/.../id1": {"principalId": "x", "clientId": "y"}},
    },
    "properties": {
        "authMode": "Key",
        "description": "census scoring",
        "publicNetworkAccess": "Disabled",
        "properties": {"owner": "ml-platform"},
        "traffic": {"blue": 100},
        "mirrorTraffic": {"green": 10},
        "provisioningState": "Succeeded",
        "scoringUri": "https://ep.westus.inference.ml.azure.com/score",
        "swaggerUri": "https://ep.westus.inference.ml.azure.com/swagger.json",
    },
    "systemData": {"createdAt": "2026-01-01T00:00:00Z"},
}


def test_an_endpoint_put_changes_only_the_maps_and_keeps_every_other_property():
    body = online.endpoint_body(ENDPOINT, {"blue": 90, "green": 10}, {})
    assert body["properties"] == {
        "authMode": "Key",
        "description": "census scoring",
        "publicNetworkAccess": "Disabled",
        "properties": {"owner": "ml-platform"},
        "traffic": {"blue": 90, "green": 10},
        "mirrorTraffic": {},  # sent even when empty: a PUT without it would keep nothing either way
    }
    assert (body["location"], body["kind"], body["tags"]) == ("westus", "Managed", {"team": "risk"})
    # read-only parts of the identity are not sent back; the user-assigned ids are, as keys
    assert body["identity"] == {
        "type": "SystemAssigned,UserAssigned",
        "userAssignedIdentities": {"/subscriptions/s/.../id1": {}},
    }
    assert not {"id", "name", "type", "systemData"} & set(body)
    assert ENDPOINT["properties"]["traffic"] == {"blue": 100}  # the read resource is not changed


def test_a_new_deployment_copies_the_live_ones_settings_with_only_the_model_changed():
    live = {
        "name": "blue",
        "location": "westus",
        "sku": {"name": "Default", "capacity": 3},
        "tags": {"a": "b"},
        "properties": {
            "endpointComputeType": "Managed",
            "instanceType": "Standard_DS3_v2",
            "model": "/subscriptions/s/.../models/census/versions/1",
            "requestSettings": {"requestTimeout": "PT10S"},
            "provisioningState": "Succeeded",
        },
    }
    body = online.deployment_body(live, "/subscriptions/s/.../models/census/versions/2", "eastus")
    assert body == {
        "location": "westus",
        "sku": {"name": "Default", "capacity": 3},
        "tags": {"a": "b"},
        "properties": {
            "endpointComputeType": "Managed",
            "instanceType": "Standard_DS3_v2",
            "requestSettings": {"requestTimeout": "PT10S"},
            "model": "/subscriptions/s/.../models/census/versions/2",
        },
    }
    first = online.deployment_body(None, "m", "eastus")
    assert first["properties"] == {"endpointComputeType": "Managed", "model": "m", "instanceType": "Standard_F4s_v2"}
    assert first["location"] == "eastus" and first["sku"]["capacity"] == 1


def test_a_deployment_name_is_derived_from_the_run_and_valid_for_the_service():
    names = {online.deployment_name(f"20261208T0{i}3145Z-0123456789abcdef") for i in range(10)}
    assert len(names) == 10
    for name in [*names, online.deployment_name("x"), online.deployment_name("ÄÖ-" * 40)]:
        assert 3 <= len(name) <= 32 and re.fullmatch(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?", name), name
    assert online.deployment_name("r-1") == online.deployment_name("r-1")


def test_zero_shares_are_stripped_from_maps():
    assert online.weights({"a": 0, "b": 100, "c": None}) == {"b": 100} and online.weights(None) == {}
