"""The CI workflow and the pre-commit configuration, checked by their formats' own validators.

.github/workflows/ci.yaml against the GitHub workflow schema vendored by check-jsonschema (no network);
.pre-commit-config.yaml with `pre-commit validate-config`; each validator also rejects a broken copy, and every
local hook's command exists and takes the arguments it is given.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from crispflow.stack.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yaml"
PRE_COMMIT = ROOT / ".pre-commit-config.yaml"
BIN = Path(sys.executable).parent


def check_workflow(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def check_pre_commit(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "pre-commit"), "validate-config", str(path)], capture_output=True, text=True,
                          timeout=60, check=False, cwd=ROOT)


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def run_commands(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def test_the_workflow_passes_the_github_workflow_schema() -> None:
    proc = check_workflow(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_broken_workflow_fails_the_schema(tmp_path: Path) -> None:
    broken = tmp_path / "ci.yaml"
    text = WORKFLOW.read_text()
    assert "    runs-on: ubuntu-24.04\n" in text
    broken.write_text(text.replace("    runs-on: ubuntu-24.04\n", "    runs_on: ubuntu-24.04\n", 1))
    proc = check_workflow(broken)
    assert proc.returncode != 0
    assert "jobs.checks" in proc.stdout + proc.stderr


def test_the_workflow_runs_the_checks_on_every_push_and_the_whole_suite_on_main() -> None:
    flow = load(WORKFLOW)
    assert set(flow[True]) >= {"push", "pull_request"}  # YAML 1.1 reads the key `on` as True
    checks, full = flow["jobs"]["checks"], flow["jobs"]["full-suite"]
    assert "if" not in checks
    apt = ("sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends prometheus "
           "prometheus-alertmanager")  # promtool/amtool check the alert rules; prod-local runs both
    assert run_commands(checks) == ["make setup", apt, ".venv/bin/ruff check .", ".venv/bin/crispflow validate",
                                    '.venv/bin/pytest -m "not slow"']
    assert "refs/heads/main" in full["if"] and full["needs"] == "checks"
    assert run_commands(full) == [apt, "make test"]
    for job in (checks, full):  # the unit tests need PostgreSQL too (the ledger on PostgreSQL)
        assert job["services"]["postgres"]["ports"] == ["5432:5432"]
        assert job["services"]["postgres"]["env"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    assert full["services"]["redis"]["ports"] == ["6379:6379"]
    for job in (checks, full):
        (python,) = [s["with"]["python-version"] for s in job["steps"] if s.get("uses", "").startswith(
            "actions/setup-python@")]
        assert python == "3.11"
        assert any(s.get("uses", "").startswith("astral-sh/setup-uv@") for s in job["steps"])


def test_the_pre_commit_config_is_valid() -> None:
    proc = check_pre_commit(PRE_COMMIT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_broken_pre_commit_config_is_rejected(tmp_path: Path) -> None:
    config = load(PRE_COMMIT)
    del config["repos"][0]["hooks"][0]["entry"]  # a local hook must say what it runs
    broken = tmp_path / ".pre-commit-config.yaml"
    broken.write_text(yaml.safe_dump(config))
    proc = check_pre_commit(broken)
    assert proc.returncode != 0
    assert "entry" in proc.stdout + proc.stderr


@pytest.mark.parametrize("hook", load(PRE_COMMIT)["repos"][0]["hooks"], ids=lambda h: h["id"])
def test_each_local_hook_runs_a_command_that_exists(hook: dict[str, Any]) -> None:
    argv = shlex.split(hook["entry"])
    command = ROOT / argv[0]
    assert command.is_file(), f"{hook['id']}: {argv[0]} does not exist (make setup creates .venv)"
    if command.name == "crispflow":  # the arguments are ones `crispflow` accepts
        args = build_parser().parse_args(argv[1:])
        assert args.command == "validate"


def test_pre_commit_covers_ruff_dags_and_specs() -> None:
    hooks = {h["id"]: h for h in load(PRE_COMMIT)["repos"][0]["hooks"]}
    assert hooks["ruff"]["entry"].startswith(".venv/bin/ruff check")
    assert hooks["crispflow-specs"]["entry"].endswith("validate --only specs")
    assert "pipelines/" in hooks["crispflow-specs"]["files"]
    assert "--only dags" in hooks["crispflow-dags"]["entry"]
    assert "dags|" in hooks["crispflow-dags"]["files"]
