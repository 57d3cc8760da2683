"""Fixtures: real Azurite (npm) and the real emulator process, both on free ports, data in temp folders.

Each test gets its own containers and runs table, so tests never see each other's state.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from localdev.services import Azurite, EmulatorProcess, fresh_names
from shared import settings as settings_module
from shared import workflow
from shared.settings import Settings
from shared.storage import BlobRef

API_KEY = "test-api-key-" + "x" * 40  # an obviously fake key
SAMPLE = (Path(__file__).resolve().parent.parent / "emulator" / "data" / "sample-training.csv").read_bytes()


@pytest.fixture(scope="session")
def azurite():
    instance = Azurite().start()
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def emulator(azurite):
    instance = EmulatorProcess(
        api_key=API_KEY, job_seconds=0.3, storage_connection_string=azurite.connection_string
    ).start()
    yield instance
    instance.stop()


@pytest.fixture
def fresh_emulator(emulator):
    emulator.admin("POST", "reset")
    emulator.admin(
        "POST",
        "config",
        {
            "job_seconds": 0.3,
            "lro_seconds": 0.2,
            "legacy_status_codes": False,
            "v2_metric_children": 1,
            "online_operation_timeout": "PT1H",
        },
    )
    return emulator


@pytest.fixture
def env(azurite, fresh_emulator) -> dict[str, str]:
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        **fresh_emulator.app_settings(),
        **fresh_names(),
        "TRAINING_BLOB_SOURCE": "LogsAndContainerScan",
        "HTTP_RETRIES": "1",  # exhausting retries should take milliseconds in tests
    }


@pytest.fixture
def settings(env) -> Settings:
    return Settings.from_env(env)


@pytest.fixture
def svc(settings) -> workflow.Services:
    services = workflow.build_services(settings)
    services.storage.ensure_container(settings.training_container)
    return services


@pytest.fixture
def app_env(env, monkeypatch):
    """The process environment the Functions host would give the worker, with caches cleared."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings_module.get_settings.cache_clear()
    workflow.get_services.cache_clear()
    yield env
    settings_module.get_settings.cache_clear()
    workflow.get_services.cache_clear()


def upload(svc: workflow.Services, name: str, data: bytes = SAMPLE) -> BlobRef:
    """Upload training data as a user would and return the version the trigger would see."""
    container = svc.settings.training_container
    svc.storage.blobs.get_blob_client(container, name).upload_blob(data, overwrite=True)
    return svc.storage.blob_ref(container, name)


def jobs(emulator) -> list[dict]:
    return emulator.admin("GET", "jobs")


@pytest.fixture
def loop_env(app_env, fresh_emulator, monkeypatch):
    """The app's environment with deploy targets on the emulator and a poll every second."""
    from tests.loop import target_settings

    env = target_settings(app_env, fresh_emulator, POLL_SCHEDULE="*/1 * * * * *")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
