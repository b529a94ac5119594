"""`crispflow drift`: exit codes 0 / 1 / 2 on real files, with and without a spec or a stored profile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crispflow.monitoring import build_profile, save_profile
from crispflow.settings import project_root
from crispflow.spec import load_spec
from crispflow.stack.main import main

SPEC = project_root() / "include" / "pipelines" / "lending_club.yaml"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("drift-cli")
    loans = pd.read_parquet(project_root() / "include" / "data" / "lending_club.parquet")
    month = loans["application_month"].dt.month
    paths = {"ref": out / "ref.parquet", "calm": out / "may.csv", "shifted": out / "nov.parquet",
             "profile": out / "profile.json"}
    loans[month <= 9].to_parquet(paths["ref"])
    loans[month == 5].to_csv(paths["calm"], index=False)
    loans[month == 11].to_parquet(paths["shifted"])
    save_profile(build_profile(load_spec("lending_club"), loans[month <= 9]), paths["profile"])
    return paths


def drift(capsys, *args: object) -> tuple[int, str, str]:
    code = main(["drift", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_no_drift_exits_0_and_drift_exits_1_with_a_spec(files, capsys) -> None:
    code, out, _ = drift(capsys, "--reference", files["ref"], "--current", files["calm"], "--spec", SPEC)
    assert code == 0 and out.splitlines()[-1].startswith("verdict: no drift")
    code, out, _ = drift(capsys, "--reference", files["profile"], "--current", files["shifted"],
                         "--spec", "lending_club", "--format", "json")
    report = json.loads(out)
    assert code == 1 and report["drift"] and "int_rate" in report["drifted_features"]
    assert report["features"]["int_rate"]["test"] == "ks" and report["features"]["sub_grade"]["test"] == "chi2"


def test_without_a_spec_types_are_inferred(files, capsys, tmp_path) -> None:
    html = tmp_path / "report.html"
    code, out, _ = drift(capsys, "--reference", files["ref"], "--current", files["shifted"], "--html", html)
    assert code == 1 and "application_month" not in out  # datetimes are skipped
    assert "int_rate" in out and "<svg" in html.read_text()


def test_importance_file_steers_the_verdict(files, capsys, tmp_path) -> None:
    weights = tmp_path / "importance.json"
    weights.write_text(json.dumps({"annual_inc": 1.0, "int_rate": 0.01}))
    code, out, _ = drift(capsys, "--reference", files["profile"], "--current", files["shifted"],
                         "--importance", weights)
    assert code == 0 and "below min_drift_share" in out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"current": "absent.csv"}, "absent.csv: no such file"),
        ({"current": "data.txt"}, "unsupported file type '.txt'"),
        ({"current": "corrupt.parquet"}, "corrupt.parquet: cannot read as parquet"),
        ({"current": "empty.csv"}, "empty.csv: the file is empty"),
        ({"current": "header_only.csv"}, "0 rows"),
        ({"current": "no_rate.csv"}, "missing column(s) ['int_rate']"),
        ({"reference": "bad_profile.json"}, "bad_profile.json: format"),
        ({"spec": "no_such_pipeline"}, "no such pipeline spec"),
        ({"importance": "importance.json"}, "importance: unknown feature(s) ['nope']"),
    ],
)
def test_bad_input_exits_2_naming_the_file_or_column(files, capsys, tmp_path, change, message) -> None:
    calm = pd.read_csv(files["calm"])
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "data.txt").write_text("x\n1\n")
    (tmp_path / "empty.csv").write_text("")
    calm.iloc[:0].to_csv(tmp_path / "header_only.csv", index=False)
    calm.drop(columns=["int_rate"]).to_csv(tmp_path / "no_rate.csv", index=False)
    (tmp_path / "bad_profile.json").write_text(json.dumps({"format": "something else"}))
    (tmp_path / "importance.json").write_text(json.dumps({"nope": 1}))
    args = {"reference": str(files["ref"]), "current": str(files["calm"])}
    args |= {k: (v if k == "spec" else str(tmp_path / v)) for k, v in change.items()}
    code, _, err = drift(capsys, *[x for k, v in args.items() for x in (f"--{k}", v)])
    assert code == 2 and message in err


def test_random_numeric_file_without_spec(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    pd.DataFrame({"a": rng.normal(size=5_000), "b": rng.choice(["u", "v"], 5_000)}).to_csv(tmp_path / "r.csv",
                                                                                          index=False)
    pd.DataFrame({"a": rng.normal(size=800), "b": rng.choice(["u", "v"], 800)}).to_csv(tmp_path / "c.csv",
                                                                                      index=False)
    code, out, _ = drift(capsys, "--reference", tmp_path / "r.csv", "--current", tmp_path / "c.csv")
    assert code == 0 and "verdict: no drift" in out


def test_drift_without_a_spec_never_imports_pandas_scipy_or_the_stack(tmp_path) -> None:
    import subprocess
    import sys

    rng = np.random.default_rng(1)
    for name, rows in (("r", 400), ("c", 200)):
        pd.DataFrame({"a": rng.normal(size=rows), "b": rng.choice(["u", "v"], rows)}).to_csv(tmp_path / f"{name}.csv",
                                                                                            index=False)
    pd.DataFrame({"a": rng.normal(size=200), "b": rng.choice(["u", "v"], 200)}).to_parquet(tmp_path / "c.parquet")
    code = (
        "import sys\n"
        "from crispflow.stack.main import main\n"
        f"for current in ('c.csv', 'c.parquet'):\n"
        f"    assert main(['drift', '--reference', {str(tmp_path / 'r.csv')!r}, '--current', "
        f"{str(tmp_path)!r} + '/' + current]) in (0, 1)\n"
        "heavy = ['pandas', 'scipy', 'sklearn', 'mlflow', 'requests', 'airflow']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_arrow_reading_gives_the_pandas_report(tmp_path, suffix) -> None:
    from crispflow.monitoring.cli import read_data
    from crispflow.monitoring.drift import compute_drift

    rng = np.random.default_rng(2)

    def frame(rows: int, shift: float) -> pd.DataFrame:
        return pd.DataFrame({"x": rng.normal(shift, 1, rows), "n": rng.integers(0, 5, rows),
                             "flag": rng.random(rows) < 0.3 + shift, "s": rng.choice(["u", "v", "w", "NA", ""], rows),
                             "gaps": np.where(rng.random(rows) < 0.1 + shift, np.nan, rng.normal(size=rows))})

    paths = {}
    for name, data in (("ref", frame(3000, 0.0)), ("cur", frame(1000, 0.2))):
        paths[name] = str(tmp_path / f"{name}{suffix}")
        data.to_csv(paths[name], index=False) if suffix == ".csv" else data.to_parquet(paths[name])
    tables = {k: read_data(p, k, arrow=True) for k, p in paths.items()}
    frames = {k: read_data(p, k) for k, p in paths.items()}
    assert all(type(t).__module__.startswith("pyarrow") for t in tables.values())
    if suffix == ".parquet":  # text read as the file's dictionary codes
        assert str(tables["cur"].schema.field("s").type).startswith("dictionary<values=string")
    profile = build_profile(None, tables["ref"])
    assert profile == build_profile(None, frames["ref"])
    assert compute_drift(profile, tables["cur"]) == compute_drift(profile, frames["cur"])


def test_dictionary_columns_over_several_row_groups_count_like_pandas(tmp_path) -> None:
    """Parquet text read as dictionary codes: each row group has its own dictionary (new values in later groups,
    nulls too); the profile and the window count as the pandas read does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from crispflow.monitoring.cli import read_data
    from crispflow.monitoring.drift import compute_drift

    rng = np.random.default_rng(3)
    values = np.array(["a", "b", "c", "d", None], dtype=object)
    for name, weights in (("ref", [0.4, 0.3, 0.2, 0.05, 0.05]), ("cur", [0.1, 0.3, 0.3, 0.25, 0.05])):
        frame = pd.DataFrame({"s": values[rng.choice(5, 3000, p=weights)], "x": rng.normal(size=3000)})
        frame.loc[:999, "s"] = frame.loc[:999, "s"].replace("d", "a")  # "d" only from the second row group on
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / f"{name}.parquet",
                       row_group_size=1000)
    table = read_data(str(tmp_path / "cur.parquet"), "current", arrow=True)
    assert table["s"].num_chunks == 3 and str(table.schema.field("s").type).startswith("dictionary")
    ref_arrow = read_data(str(tmp_path / "ref.parquet"), "reference", arrow=True)
    ref_pandas = read_data(str(tmp_path / "ref.parquet"), "reference")
    profile = build_profile(None, ref_arrow)
    assert profile == build_profile(None, ref_pandas)
    assert compute_drift(profile, table) == compute_drift(profile, read_data(str(tmp_path / "cur.parquet"), "c"))
