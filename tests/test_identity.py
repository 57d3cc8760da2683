"""Identity-based storage: settings and user-delegation SAS.

Azurite supports OAuth only partly (not for Tables, and only over HTTPS), so the identity path cannot
run end to end here; what can be checked without a service is checked: the settings the host uses,
and that every SAS is signed with a user delegation key and never outlives it.
"""

import datetime as dt
from urllib.parse import parse_qs

import pytest
from azure.storage.blob import UserDelegationKey

from shared.settings import Settings, SettingsError, StorageIdentity
from shared.storage import Storage

BASE = {
    "BES_JOBS_URL": "https://ussouthcentral.services.azureml.net/workspaces/a/services/b/jobs",
    "BES_API_KEY": "fake-key-123456",
}


def test_an_account_name_is_enough_for_an_identity_based_connection():
    s = Settings.from_env(
        {
            **BASE,
            "AzureWebJobsStorage__accountName": "acct",
            "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__clientId": "11111111-2222-3333-4444-555555555555",
        }
    )
    assert s.storage_connection is None
    assert s.storage_identity == StorageIdentity(
        "https://acct.blob.core.windows.net",
        "https://acct.queue.core.windows.net",
        "https://acct.table.core.windows.net",
        "11111111-2222-3333-4444-555555555555",
    )


def test_service_uris_must_name_all_three_services():
    env = {
        **BASE,
        "AzureWebJobsStorage__blobServiceUri": "https://acct.blob.core.windows.net",
        "AzureWebJobsStorage__tableServiceUri": "https://acct.table.core.windows.net",
    }
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert caught.value.setting == "AzureWebJobsStorage__queueServiceUri"
    with pytest.raises(SettingsError, match="AzureWebJobsStorage: is required"):
        Settings.from_env(BASE)


class NoTokenNeeded:
    """Signing a SAS with a delegation key in hand needs no token; being asked for one is a failure."""

    def get_token(self, *scopes, **kwargs):
        raise AssertionError("no service call expected")


def test_a_user_delegation_sas_is_scoped_to_one_blob_and_never_outlives_its_key():
    now = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)
    storage = Storage(
        identity=StorageIdentity(
            "https://acct.blob.core.windows.net",
            "https://acct.queue.core.windows.net",
            "https://acct.table.core.windows.net",
        ),
        credential=NoTokenNeeded(),
    )
    key = UserDelegationKey()
    key.signed_oid, key.signed_tid = "00000000-0000-0000-0000-0000000000aa", "00000000-0000-0000-0000-0000000000bb"
    key.signed_start, key.signed_expiry = "2026-11-25T11:55:00Z", "2026-12-02T12:00:00Z"
    key.signed_service, key.signed_version, key.value = "b", "2025-11-05", "a2V5LW5vdC1hLXNlY3JldA=="
    storage._delegation_key = key  # what get_user_delegation_key would have returned
    token = parse_qs(
        storage.blob_sas("models", "default/r/model.ilearner", "r", now + dt.timedelta(days=365), now=now).lstrip("?")
    )
    assert token["skoid"] == [key.signed_oid] and token["sr"] == ["b"] and token["sp"] == ["r"]
    assert token["se"] == ["2026-12-02T12:00:00Z"]  # clamped to the key, not a year
    assert storage.account_name == "acct"
