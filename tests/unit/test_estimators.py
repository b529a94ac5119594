"""Estimators a spec names: built-ins per task, allowed import paths, and one clear error per kind of mistake."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crispflow.errors import SpecError
from crispflow.estimators import BUILTINS, accepts, builtins_for, is_allowed, make_estimator

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("task", "name", "cls"),
    [
        ("binary", "logistic_regression", "LogisticRegression"),
        ("multiclass", "logistic_regression", "LogisticRegression"),
        ("binary", "hist_gradient_boosting", "HistGradientBoostingClassifier"),
        ("multiclass", "hist_gradient_boosting", "HistGradientBoostingClassifier"),
        ("regression", "hist_gradient_boosting", "HistGradientBoostingRegressor"),
        ("regression", "ridge", "Ridge"),
        ("binary", "random_forest", "RandomForestClassifier"),
        ("multiclass", "random_forest", "RandomForestClassifier"),
        ("regression", "random_forest", "RandomForestRegressor"),
        ("regression", "sklearn.linear_model.Lasso", "Lasso"),
        ("binary", "sklearn.naive_bayes.GaussianNB", "GaussianNB"),
    ],
)
def test_builtins_and_sklearn_paths_build_the_right_kind(task: str, name: str, cls: str) -> None:
    from sklearn.base import is_classifier, is_regressor

    est = make_estimator(task, name)
    assert type(est).__name__ == cls
    assert is_regressor(est) if task == "regression" else (is_classifier(est) and hasattr(est, "predict_proba"))
    assert make_estimator(task, name) is not est  # a new instance every call


def test_every_builtin_serves_the_tasks_it_lists() -> None:
    for name, tasks in BUILTINS.items():
        for task in tasks:
            make_estimator(task, name)
    assert builtins_for("regression") == ["hist_gradient_boosting", "ridge", "random_forest"]
    assert make_estimator("binary", "logistic_regression").max_iter == 5000  # crispflow's default, as before


@pytest.mark.parametrize(
    ("task", "name", "message"),
    [
        ("regression", "logistic_regression", "built-in 'logistic_regression' serves ['binary', 'multiclass'], "
                                              "not regression"),
        ("binary", "ridge", "built-in 'ridge' serves ['regression'], not binary"),
        ("regression", "sklearn.ensemble.RandomForestClassifier", "is a classifier; a regression task needs a "
                                                                  "regressor"),
        ("multiclass", "sklearn.linear_model.Lasso", "is a regressor; a multiclass task needs a classifier"),
        ("binary", "sklearn.svm.SVC", "has no predict_proba"),
        ("binary", "sklearn.preprocessing.StandardScaler", "is not a classifier"),
        ("binary", "lightgbm.LGBMClassifier", "is not allowed: import paths must start with one of ['sklearn.']"),
        ("binary", "sklearn.linear_model.NoSuchModel", "has no attribute 'NoSuchModel'"),
        ("binary", "sklearn.no_such_module.Model", "is not importable"),
        ("binary", "sklearn.base.clone", "is not a class"),
        ("binary", "sklearn.pipeline.Pipeline", "cannot be constructed without arguments"),
        ("binary", "xgb", "is neither a built-in estimator"),
        ("ordinal", "ridge", "unknown task 'ordinal'"),
    ],
)
def test_bad_estimators_are_spec_errors_naming_the_field(task: str, name: str, message: str) -> None:
    field = "training.candidates[m].estimator"
    with pytest.raises(SpecError) as err:
        make_estimator(task, name, field=field)
    assert str(err.value).startswith(f"{field}: ")
    assert message in str(err.value)


def test_allowlist_prefixes_match_whole_module_names() -> None:
    assert is_allowed("sklearn.linear_model.Ridge")
    assert not is_allowed("sklearnx.Model")
    assert is_allowed("lightgbm.LGBMRegressor", ["lightgbm"])
    assert is_allowed("lightgbm.sklearn.LGBMRegressor", ["lightgbm."])
    assert not is_allowed("lightgbmx.Model", ["lightgbm"])


def test_an_allowed_third_party_estimator_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "acme_models.py").write_text(textwrap.dedent("""
        import numpy as np
        from sklearn.base import BaseEstimator, RegressorMixin

        class MeanRegressor(RegressorMixin, BaseEstimator):
            def __init__(self, shrink=0.0):
                self.shrink = shrink

            def fit(self, X, y):
                self.mean_ = float(np.mean(y)) * (1 - self.shrink)
                return self

            def predict(self, X):
                return np.full(len(X), self.mean_)

        def not_a_class():
            return None
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SpecError, match="is not allowed"):
        make_estimator("regression", "acme_models.MeanRegressor")
    est = make_estimator("regression", "acme_models.MeanRegressor", allowed=["acme_models"])
    assert est.fit([[0], [1]], [2.0, 4.0]).predict([[5]])[0] == 3.0
    assert accepts(est, "shrink") and not accepts(est, "random_state")
    with pytest.raises(SpecError, match="is a regressor; a binary task needs a classifier"):
        make_estimator("binary", "acme_models.MeanRegressor", allowed=["acme_models"])


def test_accepts_tells_which_reserved_parameters_apply() -> None:
    assert accepts(make_estimator("binary", "logistic_regression"), "class_weight")
    assert not accepts(make_estimator("regression", "ridge"), "class_weight")
    assert accepts(make_estimator("regression", "ridge"), "random_state")
    assert not accepts(make_estimator("regression", "sklearn.svm.SVR"), "random_state")


def test_importing_the_module_does_not_import_sklearn() -> None:
    code = "import sys, crispflow.estimators, crispflow.spec; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
