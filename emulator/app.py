"""Assemble the emulator: the HTTP core plus each emulated service, seeded with one of each."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from emulator.bes import BatchExecutionService, TrainingService
from emulator.predictive import (
    ArmWebServices,
    ClassicManagement,
    ClassicWebService,
    Endpoint,
    Identity,
    initial_model,
    seed_arm,
)
from emulator.receivers import Receivers
from emulator.server import Emulator
from emulator.v2 import AzureMLv2
from emulator.v2 import seed as seed_v2

DEFAULT_WORKSPACE = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
DEFAULT_SERVICE = "f9e8d7c6b5a4493827160f5e4d3c2b1a"
PREDICTIVE_SERVICE = "5c4b3a29180f4e6d8c7b6a5948372615"
RETRAIN_ENDPOINT = "retrain"
TRAINED_MODEL = "Census Model [trained model]"
SUBSCRIPTION = "00000000-0000-0000-0000-0000000000aa"
RESOURCE_GROUP = "retraining-rg"
ARM_SERVICE = "census-predictive"


@dataclass
class Services:
    emulator: Emulator
    bes: BatchExecutionService
    classic: ClassicManagement
    arm: ArmWebServices
    identity: Identity
    seed: Callable[[], None]
    v2: AzureMLv2 | None = None

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve, then seed (URLs in the seeded definitions name the bound port)."""
        url = self.emulator.serve(host, port)
        self.seed()
        return url


def create(
    *,
    api_key: str,
    workspace: str = DEFAULT_WORKSPACE,
    service: str = DEFAULT_SERVICE,
    storage_connection_string: str | None = None,
    identity_header: str | None = None,
) -> Services:
    """The emulator with a training service (BES), a classic predictive web service with a default and
    an updatable endpoint, and — given a storage account for it — a New (ARM) predictive web service.

    ``api_key`` is the key of the training endpoint, of both classic endpoints, of the classic
    workspace, and the ARM service's primary key. A reset restores this initial state.
    """
    emulator = Emulator()
    bes = BatchExecutionService(emulator)
    bes.workspace_storage = storage_connection_string
    classic = ClassicManagement(emulator)
    identity = Identity(emulator, identity_header or secrets.token_urlsafe(24))
    arm = ArmWebServices(emulator, identity)
    v2 = AzureMLv2(emulator, identity)
    Receivers(emulator, identity)

    def seed() -> None:
        bes.services.clear()
        bes.add_service(TrainingService(workspace=workspace, service=service, api_keys=(api_key,)))
        classic.services.clear()
        web = ClassicWebService(workspace, PREDICTIVE_SERVICE, "Census Predictive", token=api_key)
        location = {
            "BaseLocation": "https://emulatorstorage.blob.core.windows.net/",
            "RelativeLocation": "experimentoutput/initial/initial.ilearner",
            "SasBlobToken": "",
        }
        for name, default in (("default", True), (RETRAIN_ENDPOINT, False)):
            web.endpoints[name] = Endpoint(
                workspace,
                PREDICTIVE_SERVICE,
                name,
                (api_key, f"{api_key}-2"),
                is_default=default,
                model=initial_model(),
                resources=[{"Name": TRAINED_MODEL, "Kind": "TrainedModel", "Location": dict(location)}],
            )
        classic.add(web)
        arm.services.clear()
        arm.operations.clear()
        arm.storage_connection_string = storage_connection_string
        seed_v2(
            v2,
            subscription=SUBSCRIPTION,
            resource_group=RESOURCE_GROUP,
            storage_connection_string=storage_connection_string,
        )
        if storage_connection_string:
            seed_arm(
                arm,
                subscription=SUBSCRIPTION,
                resource_group=RESOURCE_GROUP,
                name=ARM_SERVICE,
                storage_connection_string=storage_connection_string,
                api_key=api_key,
            ).model = initial_model()

    emulator.on_reset(seed)
    return Services(emulator, bes, classic, arm, identity, seed, v2)
