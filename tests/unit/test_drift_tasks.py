"""Reference profiles and drift per task: real sklearn models of the regression and multiclass example specs on the
demo data, their profiles, drift reports and stored windows (real PredictionLog); pipelines never mix.

Models are fitted on months 1-3 and profiled on months 4-6 (held-out rows, so the reference performance is honest);
months 7-9 are a stable window. Shifts are made explicit: concept drift (labels moved, features unchanged),
population drift (a subpopulation), and a broken model.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from crispflow.model.features import build_preprocessor, features
from crispflow.model.reference_profile import DriftInputError, build_profile, check_profile, load_profile, save_profile
from crispflow.model.tasks import labels, model_output
from crispflow.monitoring.drift import compute_drift
from crispflow.monitoring.report import render_html, render_table
from crispflow.monitoring.store import read_windows
from crispflow.monitoring.windows import drift_of_window, judge_window, window_data
from crispflow.predictions.reader import read_predictions
from crispflow.predictions.writer import PredictionLog
from crispflow.settings import project_root
from crispflow.spec import load_spec

T0 = datetime(2026, 11, 3, 10, tzinfo=UTC)
CLASSES_MC = ("Not_Verified", "Source_Verified", "Verified")
HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
def loans() -> pd.DataFrame:
    return pd.read_parquet(project_root() / "include" / "data" / "lending_club.parquet")


def months(loans: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    return loans[loans["application_month"].dt.month.between(first, last)].reset_index(drop=True)


def fit(spec, frame: pd.DataFrame, estimator) -> Pipeline:
    with threadpool_limits(limits=1):
        return Pipeline([("preprocess", build_preprocessor(spec)), ("model", estimator)]).fit(
            features(spec, frame), labels(spec, frame))


class Case:
    """One task's spec, fitted model, reference profile (months 4-6) and a stable window (months 7-9)."""

    def __init__(self, spec, model, reference: pd.DataFrame, stable: pd.DataFrame) -> None:
        self.spec, self.model = spec, model
        self.profile = build_profile(spec, features(spec, reference), scores=self.output(reference),
                                     labels=labels(spec, reference))
        self.stable = stable

    def output(self, frame: pd.DataFrame) -> np.ndarray:
        with threadpool_limits(limits=1):
            return model_output(self.spec, self.model, features(self.spec, frame))

    def drift(self, frame: pd.DataFrame, *, y=None, output=None) -> dict:
        return compute_drift(self.profile, features(self.spec, frame),
                             scores=self.output(frame) if output is None else output,
                             labels=labels(self.spec, frame) if y is None else y)


@pytest.fixture(scope="module")
def regression(loans) -> Case:
    spec = load_spec("lending_club_rate")
    model = fit(spec, months(loans, 1, 3), HistGradientBoostingRegressor(max_iter=60, random_state=0))
    return Case(spec, model, months(loans, 4, 6), months(loans, 7, 9).sample(1500, random_state=1))


@pytest.fixture(scope="module")
def multiclass(loans) -> Case:
    spec = load_spec("lending_club_verification")
    model = fit(spec, months(loans, 1, 3), LogisticRegression(max_iter=500))
    return Case(spec, model, months(loans, 4, 6), months(loans, 7, 9).sample(1500, random_state=2))


# --- reference profiles --------------------------------------------------------------------------------------------


def test_a_regression_profile_holds_predictions_observed_values_and_rmse(regression: Case, loans) -> None:
    profile, reference = regression.profile, months(loans, 4, 6)
    assert profile["task"] == "regression" and "classes" not in profile
    assert profile["prediction"]["kind"] == "numeric" and sum(profile["prediction"]["counts"]) == len(reference)
    label = profile["label"]
    assert label["kind"] == "numeric" and label["rows"] == len(reference)
    assert label["mean"] == pytest.approx(reference["int_rate"].mean())
    error = regression.output(reference) - reference["int_rate"].to_numpy()
    perf = profile["performance"]
    assert perf["rmse"]["value"] == pytest.approx(np.sqrt(np.mean(error**2)))
    assert perf["mae"]["value"] == pytest.approx(np.mean(np.abs(error)))
    assert 2.0 < perf["rmse"]["value"] < 5.0  # rate points: a real but imperfect model
    assert 0 < perf["rmse"]["se"] < 0.1 and perf["rmse"]["ci_low"] < perf["rmse"]["value"] < perf["rmse"]["ci_high"]
    assert "threshold" not in perf and "int_rate" not in profile["features"]  # the target is no feature


def test_a_multiclass_profile_holds_the_predicted_and_true_class_counts_and_log_loss(multiclass: Case, loans) -> None:
    profile, reference = multiclass.profile, months(loans, 4, 6)
    classes = list(CLASSES_MC)
    assert profile["task"] == "multiclass" and profile["classes"] == classes
    proba = multiclass.output(reference)
    assert profile["prediction"]["max"] == pytest.approx(proba.max(axis=1).max())  # P(predicted class)
    predicted = profile["predicted_class"]
    assert predicted["categories"] == classes
    assert predicted["counts"] == [*np.bincount(proba.argmax(axis=1), minlength=3).tolist(), 0, 0]
    truth = reference["verification_status"].value_counts()
    assert profile["label"]["counts"] == [int(truth[c]) for c in classes] + [0, 0]
    perf = profile["performance"]
    y = labels(multiclass.spec, reference)
    assert perf["log_loss"]["value"] == pytest.approx(-np.mean(np.log(proba[np.arange(len(y)), y])))
    assert perf["log_loss"]["value"] < np.log(3)  # better than no skill
    assert perf["accuracy"]["value"] == pytest.approx(np.mean(proba.argmax(axis=1) == y))
    assert 0 < perf["accuracy"]["se"] < 0.02


def test_task_profiles_round_trip_and_an_old_profile_reads_as_binary(tmp_path: Path, multiclass: Case) -> None:
    path = save_profile(multiclass.profile, tmp_path / "profile.json")
    assert load_profile(path) == json.loads(json.dumps(multiclass.profile))
    old = {k: v for k, v in multiclass.profile.items() if k not in ("task", "classes", "predicted_class")}
    old["label"] = old["performance"] = None
    assert check_profile(old)["features"]  # written before tasks existed: still a (binary) profile
    with pytest.raises(DriftInputError, match="classes: a multiclass profile needs its class labels"):
        check_profile({**multiclass.profile, "classes": None})
    with pytest.raises(DriftInputError, match="task: expected one of"):
        check_profile({**multiclass.profile, "task": "ranking"})


def test_bad_task_inputs_are_typed_errors_naming_the_field(regression: Case, multiclass: Case, loans) -> None:
    frame = features(regression.spec, months(loans, 4, 4))
    with pytest.raises(DriftInputError, match="labels: 1 values are missing"):
        build_profile(regression.spec, frame, labels=np.r_[np.nan, np.ones(len(frame) - 1)])
    frame = features(multiclass.spec, months(loans, 4, 4))
    with pytest.raises(DriftInputError, match=r"scores: multiclass output must be \d+ x 3 class probabilities"):
        build_profile(multiclass.spec, frame, scores=np.full(len(frame), 0.5))
    with pytest.raises(DriftInputError, match=r"labels: multiclass labels are class codes 0..2, got \[3.0\]"):
        build_profile(multiclass.spec, frame, labels=np.full(len(frame), 3))
    with pytest.raises(DriftInputError, match="task: 'binary' differs from the spec's task 'multiclass'"):
        build_profile(multiclass.spec, frame, task="binary")
    with pytest.raises(DriftInputError, match="classes: a multiclass profile needs its classes"):
        build_profile(None, frame[["int_rate"]], task="multiclass")


# --- drift of a window ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_a_stable_window_has_no_drift(task: str, regression: Case, multiclass: Case) -> None:
    case = regression if task == "regression" else multiclass
    report = case.drift(case.stable)
    assert report["task"] == task
    assert report["status"] == "no_drift" and not report["drift"], report["reasons"]
    assert report["prediction"]["status"] == "ok" and not report["prediction"]["drifted"]
    assert report["label"]["status"] == "ok" and not report["label"]["drifted"]
    assert all(m["status"] == "ok" and not m["degraded"] for m in report["performance"]["metrics"].values())
    if task == "multiclass":
        assert report["predicted_class"]["test"] == "chi2" and not report["predicted_class"]["drifted"]


def test_regression_concept_drift_is_label_drift_and_a_worse_rmse(regression: Case) -> None:
    """Same applicants, same predictions, but the observed rates moved up 2 points."""
    window = regression.stable
    report = regression.drift(window, y=window["int_rate"].to_numpy() + 2.0)
    assert report["drift"] and report["drifted_features"] == [] and not report["prediction"]["drifted"]
    assert report["label"]["drifted"] and report["label"]["test"] == "ks" and report["label"]["psi"] > 0.1
    rmse = report["performance"]["metrics"]["rmse"]
    assert rmse["degraded"] and rmse["current"] > rmse["reference"] + 0.5
    assert any(r.startswith("label distribution drift (ks") for r in report["reasons"])
    assert any(r.startswith("rmse degraded") for r in report["reasons"])


def test_the_demos_shifted_months_are_regression_drift_end_to_end(regression: Case, loans) -> None:
    """Months 10-12 of the demo data draw high-rate loans: the applicants, the predictions, the observed rates
    and the error all move."""
    report = regression.drift(months(loans, 10, 12))
    assert report["drift"] and report["drifted_features"]
    assert report["prediction"]["drifted"] and report["label"]["drifted"]
    assert report["performance"]["metrics"]["rmse"]["degraded"]


def test_regression_prediction_drift_from_a_broken_model(regression: Case) -> None:
    window = regression.stable
    report = regression.drift(window, output=regression.output(window) * 1.3)
    assert report["prediction"]["drifted"] and report["prediction"]["test"] == "ks"
    assert report["performance"]["metrics"]["rmse"]["degraded"]
    assert report["performance"]["metrics"]["mae"]["degraded"]
    assert not report["label"]["drifted"]


def test_multiclass_population_drift_moves_the_predicted_and_true_classes(multiclass: Case, loans) -> None:
    """A window of mostly verified applicants: the class mix and the predicted-class mix move together."""
    late = months(loans, 7, 9)
    verified = late[late["verification_status"] == "Verified"]
    window = pd.concat([verified.sample(600, random_state=3), late.sample(300, random_state=4)])
    report = multiclass.drift(window)
    assert report["label"]["drifted"] and report["label"]["test"] == "chi2"
    assert report["label"]["bins"]["labels"] == ["Not_Verified", "Source_Verified", "Verified", "other", "missing"]
    assert report["predicted_class"]["drifted"]
    assert report["drift"] and any(r.startswith("predicted-class drift") for r in report["reasons"])


def test_multiclass_concept_drift_is_a_worse_log_loss(multiclass: Case) -> None:
    """The same applicants with their classes rotated: the model's probabilities are now wrong."""
    window = multiclass.stable
    rotated = (labels(multiclass.spec, window) + 1) % 3
    report = multiclass.drift(window, y=rotated)
    metrics = report["performance"]["metrics"]
    assert metrics["log_loss"]["degraded"] and metrics["log_loss"]["current"] > metrics["log_loss"]["reference"]
    assert metrics["accuracy"]["degraded"] and metrics["accuracy"]["current"] < metrics["accuracy"]["reference"]
    assert not report["predicted_class"]["drifted"] and report["drifted_features"] == []
    table = render_table(report)
    assert "performance (1500 labelled rows):" in table and "log_loss" in table and "predicted_class" in table
    assert "predicted_class" in render_html(report)


def test_rows_without_output_are_missing_not_a_class(multiclass: Case) -> None:
    window = multiclass.stable
    proba = multiclass.output(window)
    proba[:100] = np.nan  # e.g. logged before probabilities were
    report = multiclass.drift(window, output=proba)
    assert report["predicted_class"]["bins"]["current"][-1] == pytest.approx(100 / len(window))
    assert report["performance"]["rows"] == len(window) - 100


# --- windows of the prediction log ---------------------------------------------------------------------------------


def log_rows(case: Case, frame: pd.DataFrame, model: str, start: datetime, prefix: str) -> list[dict]:
    """What the model server logs per task (see crispflow.predictions.schema)."""
    x, output = features(case.spec, frame), case.output(frame)
    step = HOUR / (len(frame) + 1)
    rows = []
    for i in range(len(frame)):
        row = {"request_id": f"{prefix}-{i}", "ts": start + step * (i + 1), "model": model, "version": "1",
               "alias": "champion", "served": True, "entity": str(frame["loan_id"].iat[i]), "latency_ms": 2.0,
               "status": "ok", "features": x.iloc[i].to_dict()}
        if case.spec.task == "regression":
            row |= {"score": float(output[i]), "interval_low": float(output[i]) - 5, "interval_high": output[i] + 5}
        else:
            code = int(output[i].argmax())
            row |= {"score": float(output[i][code]), "predicted": case.spec.class_labels[code],
                    "probabilities": [float(p) for p in output[i]]}
        rows.append(row)
    return rows


def feedback(case: Case, frame: pd.DataFrame, start: datetime, prefix: str, shift: float = 0.0) -> list[dict]:
    y = labels(case.spec, frame)
    return [{"request_id": f"{prefix}-{i}", "label": float(y[i]) + shift, "ts": start + HOUR} for i in range(len(y))]


def write(root: Path, model: str, rows: list[dict], fb: list[dict]) -> None:
    plog = PredictionLog(root, model)
    plog.log(rows)
    plog.log_feedback(fb)
    plog.close()


def test_window_data_reads_the_logged_probabilities_and_float_labels(tmp_path: Path, multiclass: Case) -> None:
    window = multiclass.stable.head(200)
    rows = log_rows(multiclass, window, "crispflow-mc", T0, "m")
    rows[5] = {k: v for k, v in rows[5].items() if k not in ("probabilities", "predicted")}  # logged without
    write(tmp_path, "crispflow-mc", rows, feedback(multiclass, window.head(150), T0, "m"))
    data = window_data(read_predictions(tmp_path, "crispflow-mc", T0, T0 + HOUR), version="1", alias="champion")
    assert data.rows == 200 and data.labelled_rows == 150 and data.probabilities.shape == (200, 3)
    np.testing.assert_allclose(data.probabilities[:5], multiclass.output(window.head(5)))
    assert np.isnan(data.probabilities[5]).all() and not np.isnan(data.probabilities[6]).any()
    assert data.labels[:150].tolist() == labels(multiclass.spec, window.head(150)).astype(float).tolist()
    report = drift_of_window(multiclass.profile, data)
    assert report["task"] == "multiclass" and report["feedback"]["family"] == "labelled_rows"
    assert report["performance"]["rows"] == 149  # the row logged without probabilities is not judged


def test_probabilities_of_another_class_count_are_refused(multiclass: Case) -> None:
    window = multiclass.stable.head(40)
    log = pd.DataFrame({"version": "1", "alias": "champion", "served": True, "status": "ok", "score": 0.5,
                        "probabilities": [[0.5, 0.5]] * len(window), "label": np.nan})
    for name, column in features(multiclass.spec, window).items():
        log[f"feature.{name}"] = column.to_numpy()
    with pytest.raises(DriftInputError, match="probabilities hold 2 classes, the reference profile's model has 3"):
        drift_of_window(multiclass.profile, window_data(log, version="1"))


def test_two_pipelines_in_one_store_are_judged_and_stored_apart(tmp_path: Path, regression: Case,
                                                               multiclass: Case) -> None:
    """The same hour, the same root, the same alias and version number: each model reads only its own rows, and
    its windows land in its own drift store (a regression shift never shows in the multiclass model's windows)."""
    stable_mc, shifted = multiclass.stable.head(600), regression.stable.head(600)
    write(tmp_path, "crispflow-rate", log_rows(regression, shifted, "crispflow-rate", T0, "r"),
          feedback(regression, shifted, T0, "r", shift=3.0))
    write(tmp_path, "crispflow-verif", log_rows(multiclass, stable_mc, "crispflow-verif", T0, "v"),
          feedback(multiclass, stable_mc, T0, "v"))
    summaries = {}
    for case, model in ((regression, "crispflow-rate"), (multiclass, "crispflow-verif")):
        log = read_predictions(tmp_path, model, T0, T0 + HOUR)
        assert set(log["model"]) == {model} and len(log) == 600
        summaries[model] = judge_window(case.profile, log, root=tmp_path, model=model, alias="champion",
                                        version="1", start=T0, end=T0 + HOUR).summary
    rate, verif = summaries["crispflow-rate"], summaries["crispflow-verif"]
    assert rate["drift"] and rate["labelled_rows"] == 600  # labels moved 3 points: label drift, worse RMSE
    report = json.loads(Path(rate["report"]).read_text())
    assert report["task"] == "regression" and report["performance"]["metrics"]["rmse"]["degraded"]
    assert not verif["drift"] and verif["rows"] == 600, verif
    assert read_windows(tmp_path, "crispflow-rate") == [rate]
    assert read_windows(tmp_path, "crispflow-verif") == [verif]
    assert "crispflow-rate" in rate["report"] and "crispflow-verif" in verif["report"]
    both = pd.concat([read_predictions(tmp_path, m, T0, T0 + HOUR) for m in ("crispflow-rate", "crispflow-verif")])
    assert window_data(both, version="1", alias="champion").rows == 1200  # version numbers are per model
    assert window_data(both, version="1", alias="champion", model="crispflow-verif").rows == 600


# --- the CLI -------------------------------------------------------------------------------------------------------


def test_the_cli_judges_multiclass_files_with_probability_columns(tmp_path: Path, multiclass: Case, loans,
                                                                capsys) -> None:
    """Batch-scoring-like files (`proba.<class>` columns) compared with `crispflow drift --spec ...`: the class mix
    of a mostly-verified file is label drift; the same file's rows in their true proportions are not."""
    from crispflow.stack.main import main

    def scored(frame: pd.DataFrame, path: Path) -> Path:
        out = frame.copy()
        for i, c in enumerate(CLASSES_MC):
            out[f"proba.{c}"] = multiclass.output(frame)[:, i]
        out.to_parquet(path)
        return path

    late = months(loans, 7, 9)
    ref = scored(months(loans, 4, 6), tmp_path / "ref.parquet")
    calm = scored(late.sample(800, random_state=5), tmp_path / "calm.parquet")
    skewed = scored(pd.concat([late[late["verification_status"] == "Verified"].head(600), late.head(200)]),
                    tmp_path / "skewed.parquet")
    args = ["drift", "--reference", ref, "--spec", "lending_club_verification", "--score-column", "proba.",
            "--format", "json"]
    assert main([*map(str, args), "--current", str(calm)]) == 0
    calm_report = json.loads(capsys.readouterr().out)
    assert calm_report["task"] == "multiclass" and calm_report["predicted_class"]["status"] == "ok"
    assert calm_report["performance"]["metrics"]["log_loss"]["status"] == "ok"
    assert "proba.Verified" not in calm_report["features"]
    assert main([*map(str, args), "--current", str(skewed)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["label"]["drifted"] and report["predicted_class"]["drifted"]
    unprefixed = ["drift", "--reference", str(ref), "--spec", "lending_club_verification", "--score-column", "p_"]
    assert main([*unprefixed, "--current", str(calm)]) == 2
    assert "no score column(s) ['p_Not_Verified'" in capsys.readouterr().err
