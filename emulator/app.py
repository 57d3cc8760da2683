"""Assemble the emulator: the HTTP core plus each emulated service."""

from __future__ import annotations

from emulator.bes import BatchExecutionService, TrainingService
from emulator.server import Emulator

DEFAULT_WORKSPACE = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
DEFAULT_SERVICE = "f9e8d7c6b5a4493827160f5e4d3c2b1a"


def create(
    *, api_key: str, workspace: str = DEFAULT_WORKSPACE, service: str = DEFAULT_SERVICE
) -> tuple[Emulator, BatchExecutionService]:
    emulator = Emulator()
    bes = BatchExecutionService(emulator)
    bes.add_service(TrainingService(workspace=workspace, service=service, api_keys=(api_key,)))
    return emulator, bes
