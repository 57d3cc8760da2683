"""Which module implements each kind of trainer and deploy target.

A kind's module parses its own configuration (``parse_config(fields, ctx)``: the entry's fields and
a :class:`shared.settings.ParseContext`) and builds its implementation (``build(config, services)``:
a :class:`shared.training.Trainer` or a :class:`shared.deploy.Deployer`). A new kind is one new module
and one line here; nothing else in the core names a kind. Modules are imported on first use, so an
app that trains only on BES never imports another kind's client.
"""

from __future__ import annotations

import importlib
from types import ModuleType

TRAINERS = {"bes": "shared.bes", "azureml": "shared.azureml"}
TARGETS = {"classic": "shared.classic", "arm": "shared.arm", "azureml-online": "shared.online"}


def trainer_module(kind: str) -> ModuleType:
    return importlib.import_module(TRAINERS[kind])


def target_module(kind: str) -> ModuleType:
    return importlib.import_module(TARGETS[kind])
