"""Task types in specs: binary, multiclass and regression specs parse; each kind of mistake is one SpecError
naming its field."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from crispflow.errors import SpecError
from crispflow.model.tasks import labels
from crispflow.spec import TASK_METRICS, load_spec_file, parse_spec

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "include" / "pipelines"
DATA = ROOT / "include" / "data" / "lending_club.parquet"


def raw(name: str) -> dict:
    return yaml.safe_load((PIPELINES / f"{name}.yaml").read_text())


def spec_error(data: dict) -> str:
    """The message of the one SpecError `data` raises."""
    with pytest.raises(SpecError) as err:
        parse_spec(data, "x.yaml")
    message = str(err.value)
    assert message.count("\n") == 0, f"expected one error, got:\n{message}"
    return message


@pytest.mark.parametrize(
    ("name", "task", "selection", "primary", "strategy"),
    [
        ("lending_club", "binary", "average_precision", "roc_auc", "time"),
        ("lending_club_rate", "regression", "rmse", "rmse", "random"),
        ("lending_club_verification", "multiclass", "log_loss", "log_loss", "stratified"),
    ],
)
def test_example_specs_parse_and_label_the_shipped_data(name: str, task: str, selection: str, primary: str,
                                                        strategy: str) -> None:
    spec = load_spec_file(PIPELINES / f"{name}.yaml")
    assert (spec.task, spec.training.selection_metric, spec.blessing.primary_metric) == (task, selection, primary)
    assert spec.split.strategy == strategy
    y = labels(spec, pd.read_parquet(DATA))
    assert len(y) == 9857
    if task == "regression":
        assert y.dtype == "float64" and 5 < y.mean() < 25
        assert "sub_grade" not in spec.feature_columns  # it encodes the rate
        assert spec.gate.allow_extra_columns
    elif task == "multiclass":
        assert spec.class_labels == ["Not_Verified", "Source_Verified", "Verified"]
        assert sorted(set(y.tolist())) == [0, 1, 2]
    else:
        assert y.dtype == bool and 0.03 < y.mean() < 0.08


def test_task_defaults_fill_metrics_split_and_classification_fields() -> None:
    data = raw("lending_club_rate")
    for section in ("training", "blessing", "split"):
        data[section].pop("selection_metric", None)
        data[section].pop("primary_metric", None)
        data[section].pop("strategy", None)
    spec = parse_spec(data)
    assert (spec.training.selection_metric, spec.blessing.primary_metric, spec.split.strategy) == \
        ("rmse", "rmse", "random")
    assert spec.training.class_weight is None and spec.training.calibration is None
    assert spec.training.interval_coverage == 0.9
    data = raw("lending_club_verification")
    del data["training"]["selection_metric"], data["blessing"]["primary_metric"]
    spec = parse_spec(data)
    assert (spec.training.selection_metric, spec.blessing.primary_metric) == ("log_loss", "log_loss")


def test_the_original_binary_form_keeps_working() -> None:
    data = raw("lending_club")
    assert data["target"] == {"column": "Class", "positive": "bad"}  # no `task`: read as binary
    spec = parse_spec(data)
    assert spec.task == "binary" and spec.target.task is None and spec.class_labels == []
    assert spec.training.class_weight == "balanced" and spec.training.calibration == "sigmoid"
    assert spec.training.threshold.objective == "cost"
    assert parse_spec({**data, "target": {"column": "Class", "task": "binary", "positive": "bad"}}).task == "binary"


def test_multiclass_classes_default_to_the_columns_allowed_values() -> None:
    data = raw("lending_club_verification")
    data["target"] = {"column": "verification_status", "task": "multiclass"}
    assert parse_spec(data).class_labels == ["Not_Verified", "Verified", "Source_Verified"]


def _set(path: str, value: object) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        *parents, leaf = path.split(".")
        node = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[leaf] = value
    return mutate


def _rate_target_string(data: dict) -> None:
    next(c for c in data["columns"] if c["name"] == "int_rate").update(type="string", min=None, max=None)


# (base spec, mutation, the field the error must name, words of the rule)
BAD_SPECS = [
    ("lending_club_rate", _set("target.positive", 10.0), "target.positive",
     "only a binary target has a positive class, not a regression one"),
    ("lending_club_verification", _set("target.classes", ["Not_Verified", "Verified", "Pending"]), "target.classes",
     "['Pending'] not in column 'verification_status'"),
    ("lending_club_verification", _set("target.classes", ["Not_Verified", "Verified"]), "target.classes",
     "at least 3 classes"),
    ("lending_club_verification", _set("target.classes", ["Not_Verified", "Verified", "Not_Verified"]),
     "target.classes", "duplicate classes"),
    ("lending_club_verification", _set("target.classes", [1, 2, 3]), "target.classes", "not in column"),
    ("lending_club_rate", _set("training.candidates.0.estimator", "sklearn.ensemble.RandomForestClassifier"),
     "training.candidates[ridge].estimator", "is a classifier; a regression task needs a regressor"),
    ("lending_club_rate", _set("training.candidates.0.estimator", "logistic_regression"),
     "training.candidates[ridge].estimator", "serves ['binary', 'multiclass'], not regression"),
    ("lending_club", _set("training.candidates.0.estimator", "ridge"),
     "training.candidates[logreg].estimator", "serves ['regression'], not binary"),
    ("lending_club_rate", _set("training.candidates.1.estimator", "lightgbm.LGBMRegressor"),
     "training.candidates[hgb].estimator", "is not allowed: import paths must start with one of ['sklearn.']"),
    ("lending_club_rate", _set("training.candidates.1.estimator", "sklearn.ensemble.NoSuchRegressor"),
     "training.candidates[hgb].estimator", "is not importable"),
    ("lending_club_rate", _set("training.allowed_estimators", ["light gbm"]), "training.allowed_estimators",
     "not module prefixes"),
    ("lending_club_rate", _rate_target_string, "target.column",
     "a regression target must have type int or float, 'int_rate' has type 'string'"),
    ("lending_club_rate", _set("blessing.primary_metric", "roc_auc"), "blessing.primary_metric",
     "'roc_auc' is not a regression metric"),
    ("lending_club_rate", _set("training.selection_metric", "log_loss"), "training.selection_metric",
     "'log_loss' is not a regression metric"),
    ("lending_club_verification", _set("blessing.min_metrics", {"roc_auc": 0.6}), "blessing.min_metrics.roc_auc",
     "not a multiclass metric"),
    ("lending_club", _set("blessing.min_metrics", {"rmse": 3.0}), "blessing.min_metrics.rmse",
     "not a binary metric"),
    ("lending_club_rate", _set("training.calibration", "isotonic"), "training.calibration",
     "applies to binary and multiclass targets only, not regression"),
    ("lending_club_rate", _set("training.class_weight", "balanced"), "training.class_weight",
     "applies to binary and multiclass targets only"),
    ("lending_club_verification", _set("training.threshold", {"objective": "f1"}), "training.threshold",
     "applies to binary targets only, not multiclass"),
    ("lending_club_rate", _set("split.strategy", "stratified"), "split.strategy", "needs a class label"),
    ("lending_club_rate", _set("training.interval_coverage", 1.0), "training.interval_coverage", "less than 1"),
    ("lending_club_rate", _set("target.task", "ordinal"), "target.task", "'binary', 'multiclass' or 'regression'"),
    ("lending_club", _set("target.positive", None), "target.positive", "a binary target needs `positive`"),
    ("lending_club_rate", _set("training.candidates.1.name", "ridge"), "training.candidates",
     "duplicate names ['ridge']"),
    ("lending_club_rate", _set("training.candidates.0.params", {"alpha": 1.0}), "training.candidates[0].params",
     "['alpha'] are also in the grid"),
    ("lending_club_rate", _set("training.candidates.0.grid", {"alpha": []}), "training.candidates[0].grid.alpha",
     "no values"),
]


@pytest.mark.parametrize(("base", "mutate", "field", "rule"), BAD_SPECS,
                         ids=[f"{b}:{f}:{r[:24]}" for b, _, f, r in BAD_SPECS])
def test_bad_specs_are_one_error_naming_the_field(base: str, mutate: Callable[[dict], None], field: str,
                                                  rule: str) -> None:
    data = copy.deepcopy(raw(base))
    mutate(data)
    message = spec_error(data)
    assert message.startswith(f"x.yaml: {field}: "), message
    assert rule in message
    assert "(top level)" not in message


def test_model_level_errors_read_origin_field_message() -> None:
    data = raw("lending_club")
    data["key"] = "nope"
    assert spec_error(data) == "x.yaml: key: 'nope' is not a declared column"
    data = raw("lending_club")
    data["target"]["positive"] = "maybe"
    assert spec_error(data) == "x.yaml: target.positive: 'maybe' is not in ['good', 'bad']"
    data = raw("lending_club_rate")
    data["target"]["positive"] = 1
    assert spec_error(data) == ("x.yaml: target.positive: only a binary target has a positive class, "
                                "not a regression one")


def test_an_allowed_estimator_outside_sklearn_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "acme_regressors.py").write_text(
        "from sklearn.linear_model import Ridge\n\nclass AcmeRidge(Ridge):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = raw("lending_club_rate")
    data["training"]["candidates"][0]["estimator"] = "acme_regressors.AcmeRidge"
    assert "is not allowed" in spec_error(copy.deepcopy(data))
    data["training"]["allowed_estimators"] = ["acme_regressors."]
    spec = parse_spec(data)
    assert spec.training.candidates[0].estimator == "acme_regressors.AcmeRidge"


def test_every_metric_belongs_to_a_task_and_defaults_are_valid() -> None:
    from typing import get_args

    from crispflow.spec import TASK_DEFAULT_METRICS, Metric

    assert set(get_args(Metric)) == {m for ms in TASK_METRICS.values() for m in ms}
    for task, (selection, primary) in TASK_DEFAULT_METRICS.items():
        assert selection in TASK_METRICS[task] and primary in TASK_METRICS[task]


def test_loading_specs_with_builtin_estimators_does_not_import_sklearn() -> None:
    code = ("import sys; from pathlib import Path; from crispflow.spec import load_spec_file; "
            "[load_spec_file(p) for p in sorted(Path('include/pipelines').glob('*.yaml'))]; "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
