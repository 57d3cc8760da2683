"""The shape of the code, checked: modules speak to each other through public names only, and the core
names no trainer or target kind (a new kind is a new module and a line in ``shared/kinds.py``)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = [*sorted((ROOT / "shared").glob("*.py")), ROOT / "function_app.py"]
# The modules that implement a kind, and the registry that names them.
KIND_MODULES = {"bes.py", "classic.py", "arm.py", "kinds.py"}
# The core: what runs a pipeline, whatever its trainer and targets.
CORE = {"workflow.py", "slot.py", "submission.py", "poll.py", "deploy.py", "commands.py", "decisions.py", "services.py"}


def imports(path: Path):
    tree = ast.parse(path.read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shared"):
            for alias in node.names:
                yield node.module, alias.name
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("shared"):
                    aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            yield aliases[node.value.id], node.attr


def test_no_module_uses_another_modules_private_names():
    private = [
        f"{path.name}: {module}.{name}"
        for path in APP
        for module, name in imports(path)
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


def test_the_core_names_no_trainer_or_target_kind():
    kinds = {"shared.bes", "shared.classic", "shared.arm"}
    named = [
        f"{path.name} imports {module}"
        for path in APP
        if path.name in CORE
        for module, _ in imports(path)
        if module in kinds
    ]
    assert named == [], "the core speaks to trainers and deployers through shared/training.py and shared/deploy.py"
