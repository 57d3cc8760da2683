"""The app's clients, wired once per process: storage and state, each pipeline's trainer and each
target's deployer — both chosen by kind (``shared/kinds.py``) and built on first use, so an
invocation pays only for the services it touches."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import Any

from shared import kinds
from shared.http import make_session
from shared.settings import Settings, get_settings
from shared.storage import Storage
from shared.store import CommandLog, RunStore, TargetStore


@dataclass
class Services:
    """The clients a step needs; tests build one pointed at Azurite and the emulator."""

    settings: Settings
    storage: Storage
    store: RunStore
    targets: TargetStore
    commands: CommandLog
    credential: Any = None  # azure-identity credential (ARM targets, identity-based storage), on first use
    _trainers: dict = field(default_factory=dict)
    _deployers: dict = field(default_factory=dict)
    _lock: Any = field(default_factory=threading.RLock)  # the poll builds trainers from several threads

    def session(self):
        """A retrying HTTP session for one service client."""
        return make_session(retries=self.settings.http_retries)

    def azure_credential(self):
        with self._lock:
            if self.credential is None:
                self.credential = azure_credential()
            return self.credential

    def trainer(self, pipeline: str):
        """The training service of ``pipeline`` (a :class:`shared.training.Trainer`)."""
        with self._lock:
            if pipeline not in self._trainers:
                config = self.settings.pipeline_named(pipeline)
                if config is None:
                    raise KeyError(f"no pipeline {pipeline!r} is configured")
                self._trainers[pipeline] = kinds.trainer_module(config.trainer.kind).build(config.trainer, self)
            return self._trainers[pipeline]

    def deployer(self, target):
        """The deployer of ``target`` (a :class:`shared.deploy.Deployer`), one per target."""
        with self._lock:
            if target.name not in self._deployers:
                self._deployers[target.name] = kinds.target_module(target.kind).build(target, self)
            return self._deployers[target.name]

    @property
    def bes(self):
        """The BES client of the first pipeline (its only one in the flat configuration)."""
        return self.trainer(self.settings.pipelines[0].name).client

    @bes.setter
    def bes(self, client) -> None:
        self.trainer(self.settings.pipelines[0].name).client = client


def build_services(settings: Settings, *, create: bool = True) -> Services:
    """All clients for ``settings``; ``create=False`` creates nothing in storage (for read-only tools)."""
    credential = None
    if settings.storage_identity is not None:
        credential = azure_credential(settings.storage_identity.client_id)
        storage = Storage(identity=settings.storage_identity, credential=credential)
    else:
        storage = Storage(settings.storage_connection)
    store = RunStore.open(storage.tables, settings.runs_table, create=create)
    services = Services(
        settings=settings,
        storage=storage,
        store=store,
        targets=TargetStore(store.table),
        commands=CommandLog(store.table),
        credential=credential,
    )
    if settings.notify is not None:
        from shared import notify

        store.announce = lambda run: notify.announce(services, run)
    return services


def azure_credential(client_id: str | None = None):
    """``DefaultAzureCredential``: the managed identity in Azure (``client_id`` picks a user-assigned
    one, else ``AZURE_CLIENT_ID``), developer logins locally."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(**({"managed_identity_client_id": client_id} if client_id else {}))


@functools.cache
def get_services() -> Services:
    """Process-wide clients, created on first use (not at import: keeps indexing fast)."""
    return build_services(get_settings())
