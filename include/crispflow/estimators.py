"""Estimators a spec can name: the built-in names, or an import path of a scikit-learn-compatible estimator.

`training.candidates[].estimator` is either a built-in name (`BUILTINS`) or an import path `package.module.Class`
allowed when it starts with `sklearn.` or with a prefix listed in `training.allowed_estimators` (e.g.
`lightgbm.`). An estimator must be a class, constructible without arguments, scikit-learn compatible (`get_params`
and `fit`) and of the task's kind: a classifier with `predict_proba` for binary and multiclass, a regressor for
regression. Anything else is a SpecError naming the field and the rule.

Cheap to import (the spec imports it at DAG parse time): scikit-learn and import paths are imported inside the
functions; built-in names are checked against the table below without importing anything.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterable
from typing import Any

from crispflow.errors import SpecError

# Built-in name -> {task: "module.Class"}. Every built-in lists the tasks it serves.
BUILTINS: dict[str, dict[str, str]] = {
    "logistic_regression": {
        "binary": "sklearn.linear_model.LogisticRegression",
        "multiclass": "sklearn.linear_model.LogisticRegression",
    },
    "hist_gradient_boosting": {
        "binary": "sklearn.ensemble.HistGradientBoostingClassifier",
        "multiclass": "sklearn.ensemble.HistGradientBoostingClassifier",
        "regression": "sklearn.ensemble.HistGradientBoostingRegressor",
    },
    "ridge": {"regression": "sklearn.linear_model.Ridge"},
    "random_forest": {
        "binary": "sklearn.ensemble.RandomForestClassifier",
        "multiclass": "sklearn.ensemble.RandomForestClassifier",
        "regression": "sklearn.ensemble.RandomForestRegressor",
    },
}
# Constructor arguments of the built-ins that differ from scikit-learn's defaults (any grid may override them).
BUILTIN_PARAMS: dict[str, dict[str, Any]] = {"logistic_regression": {"max_iter": 5000}}
ALWAYS_ALLOWED = ("sklearn.",)
TASKS = ("binary", "multiclass", "regression")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\.?$")


def is_builtin(name: str) -> bool:
    return name in BUILTINS


def valid_prefix(prefix: str) -> bool:
    """Whether `prefix` is a dotted module prefix such as `lightgbm.` or `my_pkg.models`."""
    return bool(_PREFIX.match(prefix))


def is_allowed(path: str, allowed: Iterable[str] = ()) -> bool:
    """Whether the import path starts with `sklearn.` or one of the `allowed` module prefixes.

    A prefix matches whole module names: `lightgbm` and `lightgbm.` both allow `lightgbm.LGBMRegressor`, neither
    allows `lightgbmx.Model`."""
    for prefix in (*ALWAYS_ALLOWED, *allowed):
        dotted = prefix if prefix.endswith(".") else prefix + "."
        if path.startswith(dotted):
            return True
    return False


def check_name(task: str, name: str, *, allowed: Iterable[str] = ()) -> str | None:
    """The first problem with `name` for `task` that needs no import (None when there is none)."""
    if task not in TASKS:
        return f"unknown task {task!r} (one of {list(TASKS)})"
    if name in BUILTINS:
        if task not in BUILTINS[name]:
            return (f"built-in {name!r} serves {sorted(BUILTINS[name])}, not {task}; "
                    f"{task} built-ins: {builtins_for(task)}")
        return None
    if not _IMPORT_PATH.match(name):
        return (f"{name!r} is neither a built-in estimator {sorted(BUILTINS)} nor an import path "
                f"'package.module.Class'")
    if not is_allowed(name, allowed):
        prefixes = [*ALWAYS_ALLOWED, *allowed]
        return (f"{name!r} is not allowed: import paths must start with one of {prefixes} "
                f"(extend the list with training.allowed_estimators)")
    return None


def builtins_for(task: str) -> list[str]:
    """The built-in names that serve `task`."""
    return [name for name, tasks in BUILTINS.items() if task in tasks]


def _import_class(path: str) -> type:
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"{path!r} is not importable: module {module_name!r} failed to import ({exc})") from None
    except Exception as exc:  # a module that raises on import is as unusable as a missing one
        raise SpecError(f"{path!r} is not importable: importing {module_name!r} raised "
                        f"{type(exc).__name__}: {exc}") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise SpecError(f"{path!r} is not importable: module {module_name!r} has no attribute {attr!r}")
    if not inspect.isclass(cls):
        raise SpecError(f"{path!r} is not a class (it is a {type(cls).__name__})")
    return cls


def _instance(path: str, cls: type, params: dict[str, Any]) -> Any:
    try:
        est = cls(**params)
    except Exception as exc:
        raise SpecError(f"{path!r} cannot be constructed without arguments: {type(exc).__name__}: {exc}") from None
    missing = [m for m in ("get_params", "set_params", "fit") if not callable(getattr(est, m, None))]
    if missing:
        raise SpecError(f"{path!r} is not a scikit-learn-compatible estimator: it has no {missing}")
    return est


def _check_kind(task: str, path: str, est: Any) -> None:
    from sklearn.base import is_classifier, is_regressor

    if task == "regression":
        if not is_regressor(est):
            what = "a classifier" if is_classifier(est) else "not a regressor"
            raise SpecError(f"{path!r} is {what}; a regression task needs a regressor")
        return
    if not is_classifier(est):
        what = "a regressor" if is_regressor(est) else "not a classifier"
        raise SpecError(f"{path!r} is {what}; a {task} task needs a classifier")
    if not hasattr(est, "predict_proba"):
        raise SpecError(f"{path!r} has no predict_proba; a {task} task needs class probabilities")


def make_estimator(task: str, name: str, *, allowed: Iterable[str] = (), field: str = "estimator") -> Any:
    """A new, unfitted estimator for `task` named by a built-in name or an allowed import path.

    :param task: binary | multiclass | regression.
    :param name: a built-in name (`BUILTINS`) or an import path `package.module.Class`.
    :param allowed: extra module prefixes (`training.allowed_estimators`); `sklearn.` is always allowed.
    :param field: where the name came from, prefixed to every error (e.g. `training.candidates[lr].estimator`).
    :raises SpecError: not allowed, not importable, not a class, not scikit-learn compatible, or the wrong kind.
    """
    allowed = tuple(allowed)
    try:
        problem = check_name(task, name, allowed=allowed)
        if problem:
            raise SpecError(problem)
        path = BUILTINS[name][task] if name in BUILTINS else name
        est = _instance(path, _import_class(path), BUILTIN_PARAMS.get(name, {}))
        _check_kind(task, path, est)
    except SpecError as exc:
        raise SpecError(f"{field}: {exc}") from None
    return est


def accepts(estimator: Any, param: str) -> bool:
    """Whether the estimator has constructor parameter `param` (e.g. class_weight, random_state)."""
    return param in estimator.get_params(deep=False)
