"""The server's per-task semantics without a registry: version tags → task, classes, interval (bad tags refuse the
version), the model's output/answer/log columns per task (real fitted sklearn models), feedback label rules, and
the merged per-model metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LinearRegression, LogisticRegression

from crispflow.model import tasks
from crispflow.serving.metrics import ServingMetrics
from crispflow.serving.models import (
    Interval,
    LoadedModel,
    RefusedModel,
    _task_fields,
    parse_classes,
    parse_interval,
    parse_task,
)
from crispflow.serving.validation import InputSchema, LabelRule, PayloadError, feedback_pairs

RNG = np.random.default_rng(0)
X = pd.DataFrame({"a": RNG.normal(size=300), "b": RNG.normal(size=300)})
CLASSES = ("low", "mid", "high")
RID = "123e4567-e89b-42d3-a456-426614174000"


def _loaded(model: object, task: str, *, classes: tuple[str, ...] = (), interval: Interval | None = None,
            threshold: float | None = 0.5) -> LoadedModel:
    return LoadedModel("m", "1", model, threshold, "tag", InputSchema(()), "sha", "run", 0.0, task, classes, interval)


def test_tags_give_the_task_and_its_metadata() -> None:
    assert _task_fields({}) == ("binary", 0.5, "default", (), None)  # versions from before tasks: binary
    assert _task_fields({"crispflow.task": "binary", "crispflow.threshold": "0.3"})[:3] == ("binary", 0.3, "tag")
    assert _task_fields({"crispflow.task": "multiclass", "crispflow.classes": json.dumps(CLASSES),
                         "crispflow.threshold": "0.3"}) == ("multiclass", None, "none", CLASSES, None)
    interval = json.dumps({"coverage": 0.9, "halfwidth": 1.5, "method": "split_conformal_oof"})
    assert _task_fields({"crispflow.task": "regression", "crispflow.interval": interval})[4] == \
        Interval(0.9, 1.5, "split_conformal_oof")
    assert _task_fields({"crispflow.task": "regression"})[4] is None  # no interval tag: no interval served


@pytest.mark.parametrize(("parse", "raw", "tag"), [
    (parse_task, "ranking", "crispflow.task"),
    (parse_classes, None, "crispflow.classes"),
    (parse_classes, '["a"]', "crispflow.classes"),
    (parse_classes, '["a", "a"]', "crispflow.classes"),
    (parse_classes, "[1, 2]", "crispflow.classes"),
    (parse_classes, "not json", "crispflow.classes"),
    (parse_interval, '{"coverage": 1.5, "halfwidth": 1}', "crispflow.interval"),
    (parse_interval, '{"coverage": 0.9, "halfwidth": -1}', "crispflow.interval"),
    (parse_interval, '{"coverage": 0.9}', "crispflow.interval"),
    (parse_interval, "[0.9, 1]", "crispflow.interval"),
])
def test_a_bad_tag_refuses_the_version_naming_the_tag(parse, raw, tag) -> None:
    with pytest.raises(RefusedModel, match=tag) as caught:
        parse(raw)
    assert caught.value.reason == "invalid"


def test_binary_output_is_unchanged() -> None:
    model = LogisticRegression().fit(X, X["a"] > 0)
    loaded = _loaded(model, "binary", threshold=0.3)
    out = loaded.output(X.head(4))
    assert np.allclose(out, model.predict_proba(X.head(4))[:, 1])
    value = float(out[0])
    assert loaded.answer(value) == {"score": value, "label": int(value >= 0.3)}
    assert loaded.logged(value) == {"score": value}


def test_multiclass_output_follows_the_class_order_of_the_tag() -> None:
    codes = np.digitize(X["a"], [-0.5, 0.5])  # 0, 1, 2 = low, mid, high
    model = LogisticRegression().fit(X, codes)
    loaded = _loaded(model, "multiclass", classes=CLASSES, threshold=None)
    spec = type("Spec", (), {"task": "multiclass", "class_labels": list(CLASSES)})()
    out = loaded.output(X.head(5))
    assert out.shape == (5, 3) and np.allclose(out, tasks.model_output(spec, model, X.head(5)))
    row = out[0].tolist()
    answer = loaded.answer(row)
    assert list(answer["probabilities"]) == list(CLASSES)
    assert answer["prediction"] == CLASSES[int(tasks.predicted_class(out[:1])[0])]
    logged = loaded.logged(row)
    assert logged["predicted"] == answer["prediction"] and logged["probabilities"] == row
    assert logged["score"] == max(row)


def test_a_class_absent_from_training_keeps_probability_zero() -> None:
    codes = np.where(X["a"] > 0, 2, 0)  # "mid" never seen
    loaded = _loaded(LogisticRegression().fit(X, codes), "multiclass", classes=CLASSES, threshold=None)
    out = loaded.output(X.head(3))
    assert (out[:, 1] == 0).all() and np.allclose(out.sum(axis=1), 1)


def test_regression_answers_the_prediction_and_its_interval() -> None:
    model = LinearRegression().fit(X, 3 * X["a"] + 1)
    loaded = _loaded(model, "regression", interval=Interval(0.9, 2.0), threshold=None)
    value = float(loaded.output(X.head(1))[0])
    assert value == pytest.approx(3 * X["a"].iloc[0] + 1)
    assert loaded.answer(value) == {"prediction": value,
                                    "interval": {"low": value - 2.0, "high": value + 2.0, "coverage": 0.9}}
    assert loaded.logged(value) == {"score": value, "interval_low": value - 2.0, "interval_high": value + 2.0}
    bare = _loaded(model, "regression", threshold=None)
    assert bare.answer(value)["interval"] is None and bare.logged(value) == {"score": value}


@pytest.mark.parametrize(("rule", "label", "expected"), [
    (LabelRule("binary", ("bad",), ("good",)), "bad", 1.0),
    (LabelRule("binary"), False, 0.0),
    (LabelRule("multiclass", classes=CLASSES), "high", 2.0),
    (LabelRule("multiclass", classes=("1", "2", "3")), 2, 1.0),  # numeric classes as JSON numbers
    (LabelRule("regression"), 12, 12.0),
    (LabelRule("regression"), -0.5, -0.5),
])
def test_accepted_labels_are_stored_as_numbers(rule, label, expected) -> None:
    assert feedback_pairs({"request_id": RID, "label": label}, 10, rule) == [(RID, expected)]


@pytest.mark.parametrize(("rule", "label", "broken"), [
    (LabelRule("binary"), 2, "type"),
    (LabelRule("multiclass", classes=CLASSES), "top", "class"),
    (LabelRule("multiclass", classes=CLASSES), 0, "class"),  # a code is not a class label
    (LabelRule("regression"), "12", "type"),
    (LabelRule("regression"), True, "type"),
    (LabelRule("regression"), math.inf, "finite"),
    (LabelRule("regression"), None, "missing"),
])
def test_refused_labels_name_the_field_and_the_rule(rule, label, broken) -> None:
    with pytest.raises(PayloadError) as caught:
        feedback_pairs([{"request_id": RID, "label": label}], 10, rule)
    (detail,) = caught.value.details
    assert (caught.value.status, detail["field"], detail["rule"]) == (422, "label", broken)
    assert rule.expected() in detail["message"]


def test_metrics_carry_the_model_and_merge_every_models_drift_gauges(tmp_path) -> None:
    from crispflow.monitoring.gauges import DriftCollector

    metrics = ServingMetrics(lambda: {"a": {"written": 3, "dropped": 0, "pending": 1}, "b": {"written": 5}})
    for name in ("a", "b"):
        metrics.drift.add(name, DriftCollector(tmp_path, name))
        metrics.records.labels(name, "1", "champion").inc()
    metrics.set_served("a", {"champion": "1", "canary": "2"})
    metrics.set_served("a", {"champion": "2"})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}
    assert samples[("crispflow_serve_model_info", (("alias", "champion"), ("model", "a"), ("version", "2")))] == 1
    assert not any(k[0] == "crispflow_serve_model_info" and ("version", "1") in k[1] for k in samples)
    assert samples[("crispflow_serve_prediction_log_written_total", (("model", "b"),))] == 5
    assert samples[("crispflow_drift_store_up", (("model", "a"),))] == 1
    assert samples[("crispflow_drift_store_up", (("model", "b"),))] == 1
    assert samples[("crispflow_serve_predictions_total", (("alias", "champion"), ("model", "b"),
                                                          ("version", "1")))] == 1
