"""`crispflow validate`: fails on a broken spec and on a DAG with a heavy top-level import, passes on the repo."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crispflow.stack.main import main
from crispflow.stack.validate import Problem, check_dags, check_specs

ROOT = Path(__file__).resolve().parents[2]

DAG = '''from __future__ import annotations

import pendulum
{imports}
from airflow.sdk import dag, task


@dag(dag_id="{dag_id}", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def pipeline():
    @task
    def noop() -> None:
        return None

    noop()


pipeline()
'''


def write_dag(folder: Path, stem: str, *, imports: str = "", dag_id: str | None = None) -> Path:
    path = folder / f"{stem}.py"
    path.write_text(DAG.format(imports=imports, dag_id=dag_id or stem))
    return path


@pytest.fixture
def broken_specs(tmp_path: Path) -> Path:
    """A copy of the demo spec whose first column has a type that does not exist."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    spec = yaml.safe_load((ROOT / "include" / "pipelines" / "lending_club.yaml").read_text())
    spec["columns"][0]["type"] = "number"
    (folder / "lending_club.yaml").write_text(yaml.safe_dump(spec))
    return folder


def test_a_broken_spec_fails_with_the_file_and_the_field(broken_specs: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    (problem,) = check_specs(broken_specs)
    assert problem.path.endswith("pipelines/lending_club.yaml")
    assert problem.rule == "spec"
    assert problem.message.startswith("columns[0].type: ")
    assert "'int'" in problem.message  # the allowed types are named

    empty = tmp_path / "dags"
    empty.mkdir()
    code = main(["validate", "--pipelines", str(broken_specs), "--dags", str(empty)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines[0] == str(problem)
    assert lines[-1].startswith("FAILED: 1 problem(s): 1 spec(s), 0 DAG file(s)")


def test_a_dag_importing_a_heavy_module_at_the_top_level_fails(tmp_path: Path) -> None:
    """One probe, one file per rule: heavy import, dag_id != file stem, an import error; a clean file passes."""
    write_dag(tmp_path, "heavy", imports="import pandas  # noqa: F401")
    write_dag(tmp_path, "misnamed", dag_id="something_else")
    write_dag(tmp_path, "broken", imports="import no_such_module_anywhere  # noqa: F401")
    write_dag(tmp_path, "clean")
    problems = check_dags(tmp_path, max_parse_seconds=60)  # the rules, not this machine's speed
    by_file: dict[str, list[Problem]] = {}
    for problem in problems:
        by_file.setdefault(Path(problem.path).name, []).append(problem)
    assert sorted(by_file) == ["broken.py", "heavy.py", "misnamed.py"]
    heavy = {(p.rule, p.message) for p in by_file["heavy.py"]}
    assert ("heavy-import", "imports pandas at parse time (import it inside the task that needs it)") in heavy
    assert {rule for rule, _ in heavy} == {"heavy-import"}  # pandas' own pyarrow may be named too
    assert [(p.rule, p.message) for p in by_file["misnamed.py"]] == [
        ("dag-id", "defines something_else; the DAG's dag_id must be 'misnamed'")]
    (broken,) = by_file["broken.py"]
    assert broken.rule == "dag-import"
    assert "no_such_module_anywhere" in broken.message


def test_the_repository_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate"])
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("ok: "), out
    assert code == 0
    specs = len(list((ROOT / "include" / "pipelines").glob("*.yaml")))
    dags = len(list((ROOT / "dags").glob("*.py")))
    assert f"{specs} spec(s), {dags} DAG file(s), plugin import " in out[-1]
