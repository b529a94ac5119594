"""The layering, checked: the import contracts in pyproject.toml ([tool.importlinter]), DAG files that use only
the public names of the Airflow layer, and a plugin file that stays cheap to import."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
HEAVY = ["pandas", "sklearn", "mlflow", "pyarrow", "great_expectations", "scipy"]
VERDICT_MODULES = ["crispflow.model.evaluation", "crispflow.model.blessing"]


def loaded_after(code: str, modules: list[str]) -> list[str]:
    """Which of `modules` a fresh interpreter has loaded after running `code` (from the project root)."""
    probe = f"import json, sys\n{code}\nprint(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint_imports), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_dag_files_import_only_public_names_of_the_airflow_layer(path: Path) -> None:
    private = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported = [(node.module, alias.name) for alias in node.names]
        else:
            continue
        for module, name in imported:
            if module.split(".")[0] != "crispflow_airflow":
                continue
            if any(part.startswith("_") for part in module.split(".")) or (name or "").startswith("_"):
                private.append(f"line {node.lineno}: {module}" + (f" import {name}" if name else ""))
    assert not private, f"{path.name} imports private names of crispflow_airflow: {private}"


def test_the_plugin_file_imports_nothing_heavy() -> None:
    code = "sys.path.insert(0, 'plugins')\nimport crispflow_plugin"
    assert loaded_after(code, HEAVY) == []


def test_evaluation_and_blessing_import_only_numerical_libraries() -> None:
    """Verdicts are computed from plain values: numpy, pandas, scipy, scikit-learn, matplotlib and crispflow
    (MLflow and Airflow are forbidden by the import contracts); plots and models only inside functions."""
    import grimp

    graph = grimp.build_graph("crispflow", include_external_packages=True, cache_dir=None)
    allowed = {"__future__", "collections", "io", "math", "time", "typing", "crispflow",
               "numpy", "pandas", "scipy", "sklearn", "matplotlib"}
    for module in VERDICT_MODULES:
        packages = {name.split(".")[0] for name in graph.find_modules_directly_imported_by(module)}
        assert packages <= allowed, f"{module} imports {sorted(packages - allowed)}"
    assert loaded_after(f"import {', '.join(VERDICT_MODULES)}", ["sklearn", "matplotlib"]) == []
