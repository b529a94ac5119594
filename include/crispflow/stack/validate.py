"""`crispflow validate`: the checks a deployment pipeline runs before shipping DAGs, without a running Airflow.

Every pipeline spec through the spec loader; every DAG file parsed the way the dag-processor does it (one process
with Airflow loaded, forked per file, so one file's imports never hide another's); the plugin's import cost in a
fresh interpreter. Each problem is one line `file: rule: message`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crispflow.errors import SpecError
from crispflow.spec import load_spec_file

# Never imported at the top level of a DAG file or the plugin: they belong inside the task that needs them.
HEAVY: tuple[str, ...] = ("pandas", "sklearn", "scipy", "mlflow", "great_expectations", "pyarrow")
MAX_PARSE_SECONDS = 2.0
MAX_PLUGIN_IMPORT_MS = 500.0
PROBE_TIMEOUT = 120.0  # seconds for one probe process (Airflow's import plus every file)
PLUGIN_MODULE = "crispflow_plugin"

# argv: heavy modules (JSON), per-file timeout, DAG files. Airflow is imported once (the dag-processor has it
# loaded), Variable and Connection access is forbidden, then each file is executed in a forked child that reports
# its parse time, the heavy modules it pulled in, the dag_ids it defines or its error, as one JSON line per file.
DAG_PROBE = "crispflow_airflow.probes.dag_parse"  # a module of the Airflow layer, run in a subprocess

# argv: plugins folder, module name, heavy modules (JSON). Airflow's plugin machinery is loaded first (the
# api-server and scheduler have it); what the plugin file adds on top of it is measured.
PLUGIN_PROBE = "crispflow_airflow.probes.plugin_import"


@dataclass(frozen=True)
class Problem:
    """One failed rule in one file."""

    path: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.rule}: {self.message}"


PARTS: tuple[str, ...] = ("specs", "dags", "plugin")


@dataclass(frozen=True)
class Report:
    """The problems found and what was checked (None: that part was not checked)."""

    problems: list[Problem]
    specs: int | None = None
    dag_files: int | None = None
    plugin_import_ms: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """`ok: ...` or `FAILED: n problem(s): ...`, naming what was checked."""
        checked = []
        if self.specs is not None:
            checked.append(f"{self.specs} spec(s)")
        if self.dag_files is not None:
            checked.append(f"{self.dag_files} DAG file(s)")
        if self.plugin_import_ms is not None:
            checked.append(f"plugin import {self.plugin_import_ms:.0f} ms")
        verdict = "ok" if self.ok else f"FAILED: {len(self.problems)} problem(s)"
        return f"{verdict}: {', '.join(checked) or 'nothing checked'}"


def _shown(path: Path | str) -> str:
    """The path relative to the working directory when it is below it (shorter CI logs)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def check_specs(pipelines_dir: Path) -> list[Problem]:
    """Every `*.yaml` in the folder through the spec loader; one problem per invalid field."""
    if not pipelines_dir.is_dir():
        return [Problem(_shown(pipelines_dir), "spec", "no such folder")]
    problems = []
    for path in sorted(pipelines_dir.glob("*.yaml")):
        try:
            load_spec_file(path)
        except SpecError as exc:
            for line in str(exc).splitlines():
                problems.append(Problem(_shown(path), "spec", line.removeprefix(f"{path}: ")))
    return problems


@contextmanager
def _probe_env() -> Iterator[dict[str, str]]:
    """The environment of a probe: AIRFLOW_HOME kept if set, else a throwaway one (no ~/airflow written)."""
    env = dict(os.environ)
    if env.get("AIRFLOW_HOME"):
        yield env
        return
    with tempfile.TemporaryDirectory(prefix="crispflow-validate-") as home:
        env.update(AIRFLOW_HOME=home, AIRFLOW__CORE__LOAD_EXAMPLES="False")
        yield env


def _run(module: str, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    with _probe_env() as env:
        try:
            return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                                  timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            return subprocess.CompletedProcess(exc.cmd, -9, out, f"timed out after {timeout:.0f} s")


def _last_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def parse_dag_files(paths: Sequence[Path], *, timeout: float = PROBE_TIMEOUT) -> dict[str, dict[str, Any]]:
    """Each file's parse as the dag-processor sees it: {path: {seconds, heavy, dag_ids, error}}."""
    if not paths:
        return {}
    proc = _run(DAG_PROBE, [json.dumps(HEAVY), str(timeout), *map(str, paths)], timeout)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            results[row.pop("path")] = row
    for path in map(str, paths):  # the probe itself failed (no Airflow, a crash): every unreported file fails
        results.setdefault(path, {"seconds": None, "heavy": [], "dag_ids": [],
                                  "error": f"probe failed: {_last_error_line(proc.stderr)}"})
    return results


def dag_problems(results: Mapping[str, Mapping[str, Any]], *, max_parse_seconds: float) -> list[Problem]:
    """The rules over parse results: imports, dag_id == file stem, parse time, no heavy top-level import."""
    problems = []
    for path, r in results.items():
        shown, stem = _shown(path), Path(path).stem
        if r["error"]:
            problems.append(Problem(shown, "dag-import", r["error"]))
            continue
        if stem not in r["dag_ids"]:
            found = ", ".join(r["dag_ids"]) or "no DAG"
            problems.append(Problem(shown, "dag-id", f"defines {found}; the DAG's dag_id must be {stem!r}"))
        if r["seconds"] is not None and r["seconds"] > max_parse_seconds:
            problems.append(Problem(shown, "parse-time", f"took {r['seconds']:.2f} s to parse "
                                    f"(limit {max_parse_seconds:g} s)"))
        for module in r["heavy"]:
            problems.append(Problem(shown, "heavy-import", f"imports {module} at parse time "
                                    f"(import it inside the task that needs it)"))
    return problems


def check_dags(dags_dir: Path, *, max_parse_seconds: float = MAX_PARSE_SECONDS) -> list[Problem]:
    """Every `*.py` DAG file of the folder; one problem per broken rule."""
    if not dags_dir.is_dir():
        return [Problem(_shown(dags_dir), "dag-import", "no such folder")]
    results = parse_dag_files(sorted(dags_dir.glob("*.py")))
    return dag_problems(results, max_parse_seconds=max_parse_seconds)


def measure_plugin(plugins_dir: Path, *, module: str = PLUGIN_MODULE,
                   timeout: float = PROBE_TIMEOUT) -> tuple[float | None, list[str], str | None]:
    """(import milliseconds, heavy modules it loaded, error) of the plugin file, in a fresh interpreter."""
    proc = _run(PLUGIN_PROBE, [str(plugins_dir), module, json.dumps(HEAVY)], timeout)
    if proc.returncode != 0:
        return None, [], _last_error_line(proc.stderr)
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    return row["ms"], row["heavy"], None


def check_plugin(plugins_dir: Path, *, max_import_ms: float = MAX_PLUGIN_IMPORT_MS,
                 module: str = PLUGIN_MODULE) -> tuple[list[Problem], float | None]:
    """The plugin file imports, within the time limit, and loads no heavy module."""
    shown = _shown(plugins_dir / f"{module}.py")
    if not (plugins_dir / f"{module}.py").is_file():
        return [Problem(shown, "plugin-import", "no such file")], None
    ms, heavy, error = measure_plugin(plugins_dir, module=module)
    if error:
        return [Problem(shown, "plugin-import", error)], None
    problems = [Problem(shown, "plugin-heavy-import", f"imports {m} when Airflow loads the plugin") for m in heavy]
    if ms is not None and ms > max_import_ms:
        problems.append(Problem(shown, "plugin-import-time", f"import took {ms:.0f} ms (limit {max_import_ms:g} ms)"))
    return problems, ms


def validate(pipelines_dir: Path, dags_dir: Path, plugins_dir: Path, *, parts: Sequence[str] = PARTS,
             max_parse_seconds: float = MAX_PARSE_SECONDS,
             max_plugin_import_ms: float = MAX_PLUGIN_IMPORT_MS) -> Report:
    """The chosen parts (specs, dags, plugin); every problem found, not only the first."""
    problems: list[Problem] = []
    specs = dag_files = plugin_ms = None
    if "specs" in parts:
        problems += check_specs(pipelines_dir)
        specs = len(list(pipelines_dir.glob("*.yaml")))
    if "dags" in parts:
        problems += check_dags(dags_dir, max_parse_seconds=max_parse_seconds)
        dag_files = len(list(dags_dir.glob("*.py")))
    if "plugin" in parts:
        plugin_problems, plugin_ms = check_plugin(plugins_dir, max_import_ms=max_plugin_import_ms)
        problems += plugin_problems
    return Report(problems, specs=specs, dag_files=dag_files, plugin_import_ms=plugin_ms)
