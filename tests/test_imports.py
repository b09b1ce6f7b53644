"""The import rules of the layout: what each layer may import of the project (read with ast)."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "transfusion_jax"


def project_imports(path) -> set[str]:
    """The project modules a file imports (at any depth in the file), dotted."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "transfusion_jax":
                found |= {f"transfusion_jax.{a.name}" for a in node.names}
            elif node.module.startswith("transfusion_jax."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("transfusion_jax.")}
    return found


def graph(folder: str) -> dict[str, set[str]]:
    """``{module file: top-level project parts it imports}`` for one package or module."""
    files = sorted((PACKAGE / folder).rglob("*.py")) if (PACKAGE / folder).is_dir() else [
        PACKAGE / f"{folder}.py"]
    return {str(f.relative_to(PACKAGE)): {m.split(".")[1] for m in project_imports(f)}
            for f in files}


# part -> the project parts it must never import
FORBIDDEN = {
    "similarity": {"analysis", "experiments", "train", "runs", "checkpoints", "models", "init",
                   "data", "weights", "api", "main"},
    "checkpoints": {"analysis", "experiments", "train", "runs", "models", "init", "data",
                    "weights", "similarity", "api", "main"},
    "outputs": {"analysis", "experiments", "train", "runs", "checkpoints", "models", "api"},
    "runs": {"analysis", "experiments", "train", "init", "data", "api", "main"},
    "models": {"analysis", "experiments", "train", "runs", "init", "data", "api", "main"},
    "analysis": {"train", "experiments", "api", "main"},
    # (train/__init__.py imports api lazily: the package is callable as api.train)
    "train": {"analysis", "experiments", "main"},
}


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_layer_imports_only_downwards(part):
    for module, imports in graph(part).items():
        assert not imports & FORBIDDEN[part], f"{module} imports {imports & FORBIDDEN[part]}"


def test_experiments_import_train_only_to_train_runs():
    users = sorted(m for m, imports in graph("experiments").items() if "train" in imports)
    # the sweep trains runs; the scheduler's jobs do (through the sweep), and say where
    # each resumes from
    assert users == ["experiments/scheduler.py", "experiments/sweep.py"]
