"""`POST /predict?explain=true&top_k=k` against a real MLflow server, over real HTTP, with the real prediction log.

One registered model (`crispflow-t_explain_<id>`, the demo spec's features), its versions fitted the way training
fits them and tagged the way the training step tags them (`crispflow.explainer` = the runs:/ URI of the record made
by `crispflow.model.explain.explainer_record`, `crispflow.explainer_sha256` = its `record_digest`):

- v1: calibrated logistic regression (linear_exact), v2: gradient boosting (tree_shap);
- v3: v1's model and record, but a hash tag that does not match the record;
- v4: v1's model without any record;
- v5: another calibrated logistic regression tagged with v1's record (whose hash matches): its self-test refuses it.

Each test sets the aliases it needs and puts the champion back on v1."""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from support.serving import Running, http
from threadpoolctl import threadpool_limits

from crispflow.model import registry
from crispflow.model.explain import EXPLAINER_ARTIFACT, explainer_record, record_digest
from crispflow.predictions.reader import read_predictions
from crispflow.serving.config import ServeConfig
from crispflow.serving.models import EXPLAINER_SHA_TAG, EXPLAINER_TAG

pytest_plugins = ["support.mlflow_server"]
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = {"linear_exact": 1e-6, "tree_shap": 1e-4}


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlf(mlflow_server):
    return registry.client(mlflow_server.url)


@pytest.fixture(scope="module")
def spec():
    from crispflow.spec import load_spec

    return load_spec("lending_club")


@pytest.fixture(scope="module")
def frames(spec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout) of the demo data as the data phase publishes it (training on a 3,000-row sample)."""
    from crispflow.data.extracts import conform, new_rejections
    from crispflow.model.holdout import holdout_split

    published = conform(spec, pd.read_parquet(ROOT / "include/data/lending_club.parquet"), new_rejections())
    train, holdout = holdout_split(spec, published)
    return train.head(3000), holdout


def _fit(spec, train: pd.DataFrame, candidate: str, params: dict[str, Any], *, calibrated: bool) -> Any:
    from sklearn.calibration import CalibratedClassifierCV

    from crispflow.model.features import features
    from crispflow.model.tasks import labels
    from crispflow.model.training import build_model

    model = build_model(spec, next(c for c in spec.training.candidates if c.name == candidate), params)
    if calibrated:  # as training wraps a calibrated spec's pipeline
        model = CalibratedClassifierCV(model, method="sigmoid", cv=3, ensemble=False)
    with threadpool_limits(limits=1):
        return model.fit(features(spec, train), labels(spec, train))


def _register(mlf, name: str, step: int, model: Any, example: pd.DataFrame, record: dict[str, Any] | None,
              sha: str | None = None) -> str:
    """Register `model` as a version from its own run; log `record` there and tag it (hash `sha`, default the
    record's own) as the training step does."""
    run_key = f"{name}/{step}"
    run_id = registry.find_or_create_run(mlf, "t_explain", run_key, f"train{step}")
    version = registry.register(mlf, name=name, run_id=run_id, run_key=run_key, model=model, example=example,
                                tags={"crispflow.task": "binary", "crispflow.threshold": "0.3"}).version
    if record is not None:
        path = f"{EXPLAINER_ARTIFACT}/v{version}.json"
        mlf.log_text(run_id, json.dumps(record, sort_keys=True), path)
        mlf.set_model_version_tag(name, version, EXPLAINER_TAG, f"runs:/{run_id}/{path}")
        mlf.set_model_version_tag(name, version, EXPLAINER_SHA_TAG, sha or record_digest(record))
    return version


@pytest.fixture(scope="module")
def model(mlf, spec, frames) -> dict[str, Any]:
    from crispflow.model.features import features

    train, holdout = frames
    name = f"crispflow-t_explain_{uuid.uuid4().hex[:8]}"
    example = features(spec, train).head(200).copy()
    example.loc[example.index[0], "revol_util"] = float("nan")  # optional in the signature: the pipeline imputes it
    example.loc[example.index[1], "emp_length"] = None
    lr = _fit(spec, train, "logreg", {"C": 0.1}, calibrated=True)
    hgb = _fit(spec, train, "hgb", {"max_iter": 40, "max_leaf_nodes": 15}, calibrated=False)
    other = _fit(spec, train, "logreg", {"C": 10.0}, calibrated=True)  # v1's shape: only the probe tells it apart
    lr_record, hgb_record = explainer_record(spec, lr, train), explainer_record(spec, hgb, train)
    versions = {
        "lr": _register(mlf, name, 1, lr, example, lr_record),
        "hgb": _register(mlf, name, 2, hgb, example, hgb_record),
        "mismatch": _register(mlf, name, 3, lr, example, lr_record, sha="0" * 64),
        "none": _register(mlf, name, 4, lr, example, None),
        "self_test": _register(mlf, name, 5, other, example, lr_record),
    }
    registry.set_alias(mlf, name, "champion", versions["lr"])
    return {"name": name, "versions": versions, "fitted": {"lr": lr, "hgb": hgb},
            "records": _records(spec, holdout)}


def _records(spec, holdout: pd.DataFrame) -> list[dict[str, Any]]:
    """Holdout rows as /predict records (JSON values; missing → null), with the loan id (the entity key)."""
    out = []
    for row in holdout[[spec.key, *spec.feature_columns]].to_dict(orient="records"):
        out.append({k: None if v is pd.NA or (isinstance(v, float) and math.isnan(v))
                    else (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
    return out


@pytest.fixture(scope="module")
def server(model, mlflow_server, tmp_path_factory) -> Iterator[Running]:
    log_root = tmp_path_factory.mktemp("predictions")
    config = ServeConfig(model=model["name"], tracking_uri=mlflow_server.url, predictions_url=str(log_root),
                         poll_interval=0.2, log_flush_interval=0.2, only=(model["name"],))
    with Running(config) as running:
        running.log_root = log_root  # type: ignore[attr-defined]
        _wait(lambda: _champion(running.url) == model["versions"]["lr"], 120, "champion loaded")
        yield running


# --- helpers ----------------------------------------------------------------------------------------------------


def _wait(check, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value is not None and value is not False:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what} not reached in {timeout} s")


def _champion(url: str) -> str | None:
    reply = http.get(f"{url}/ready", timeout=10)
    return reply.json().get("champion") if reply.status_code == 200 else None


def _describe(url: str) -> dict[str, Any]:
    return http.get(f"{url}/model", timeout=10).json()


NO_POLICY = {"canary_share": 0.0, "shadow_share": 0.0, "entity_key": None}


@contextlib.contextmanager
def _serving(server, mlf, model, aliases: dict[str, str], tags: dict[str, str] | None = None,
             policy: dict[str, Any] | None = None) -> Iterator[None]:
    """Point the aliases (and the registered-model `tags`, read by the server as `policy`) as given until the block
    ends, then back: champion v1 alone."""
    name = model["name"]
    for key, value in (tags or {}).items():
        mlf.set_registered_model_tag(name, key, value)
    for alias, version in aliases.items():
        registry.set_alias(mlf, name, alias, version)

    def serving(arms: dict[str, str], expected: dict[str, Any]) -> bool:
        found = _describe(server.url)
        return {a: d["version"] for a, d in found["aliases"].items()} == arms \
            and {k: found["policy"][k] for k in expected} == expected

    try:
        _wait(lambda: serving(aliases, {**NO_POLICY, **(policy or {})}), 60, f"serving {aliases}")
        yield
    finally:
        for alias in aliases:
            if alias != "champion":
                mlf.delete_registered_model_alias(name, alias)
        for key in tags or {}:
            mlf.delete_registered_model_tag(name, key)
        registry.set_alias(mlf, name, "champion", model["versions"]["lr"])
        _wait(lambda: serving({"champion": model["versions"]["lr"]}, NO_POLICY), 60, "back to v1 alone")


def _features(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "loan_id"}


def _usable(server, records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """`n` records the champion's signature accepts (no null in a required field), entity key kept."""
    required = {f["name"] for f in _describe(server.url)["aliases"]["champion"]["signature"] if f["required"]}
    return [r for r in records if not any(r[k] is None for k in required)][:n]


def _explained(server, records: list[dict[str, Any]], query: str = "explain=true", path: str = "/predict") -> Any:
    return http.post(f"{server.url}{path}?{query}", json={"records": records}, timeout=60)


def _assert_additive(explanation: dict[str, Any], top_k: int, features: list[str]) -> None:
    method = explanation["method"]
    items = explanation["contributions"]
    assert len(items) == top_k and len({i["feature"] for i in items}) == top_k
    assert {i["feature"] for i in items} <= set(features)
    sizes = [abs(i["contribution"]) for i in items]
    assert sizes == sorted(sizes, reverse=True)
    total = explanation["base_value"] + sum(i["contribution"] for i in items) + explanation["other"]
    assert abs(total - explanation["check"]["output"]) <= TOLERANCE[method]
    assert explanation["check"]["abs_error"] <= TOLERANCE[method]


def _raw_margin(fitted: Any, spec, records: list[dict[str, Any]]) -> np.ndarray:
    """The fitted model's log-odds before calibration, computed here from sklearn (not by the explainer)."""
    from crispflow.model.features import features

    frame = features(spec, pd.DataFrame([_features(r) for r in records]))
    inner = fitted.calibrated_classifiers_[0].estimator if hasattr(fitted, "calibrated_classifiers_") else fitted
    return np.asarray(inner.decision_function(frame), dtype="float64")


# --- 1. additive explanations, top_k ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lr", "hgb"])
def test_explain_true_returns_additive_explanations_of_the_models_own_output(server, mlf, model, spec,
                                                                            kind) -> None:
    version = model["versions"][kind]
    records = _usable(server, model["records"], 40)
    with _serving(server, mlf, model, {"champion": version}):
        described = _describe(server.url)["aliases"]["champion"]["explainer"]
        method = "linear_exact" if kind == "lr" else "tree_shap"
        assert described["status"].startswith(f"ready: {method}") and described["method"] == method
        assert described["features"] == len(spec.feature_columns)
        reply = _explained(server, [_features(r) for r in records], "explain=true&top_k=3")
        assert reply.status_code == 200, reply.text
        items = reply.json()["predictions"]
        for record, item in zip(records, items, strict=True):
            assert item["model_version"] == version
            explanation = item["explanation"]
            assert explanation["method"] == method and explanation["space"] == described["space"]
            _assert_additive(explanation, 3, spec.feature_columns)
            for contribution in explanation["contributions"]:  # the record's own (raw) input values
                assert contribution["value"] == record[contribution["feature"]]
        # the explained output is the model's log-odds (before calibration), computed independently here
        margins = _raw_margin(model["fitted"][kind], spec, records)
        outputs = np.array([i["explanation"]["check"]["output"] for i in items])
        assert np.allclose(outputs, margins, rtol=0, atol=1e-9)
        if kind == "hgb":  # uncalibrated: the served score is the sigmoid of the explained output
            scores = np.array([i["score"] for i in items])
            assert np.allclose(scores, 1 / (1 + np.exp(-outputs)), rtol=0, atol=1e-9)
        # the default top_k is 5; every feature can be listed, then nothing is left for "other"
        default = _explained(server, [_features(records[0])]).json()["predictions"][0]["explanation"]
        _assert_additive(default, 5, spec.feature_columns)
        everything = _explained(server, [_features(records[0])], f"explain=1&top_k={len(spec.feature_columns)}")
        full = everything.json()["predictions"][0]["explanation"]
        _assert_additive(full, len(spec.feature_columns), spec.feature_columns)
        assert full["other"] == 0.0
        plain = http.post(f"{server.url}/predict", json={"records": [_features(records[0])]}).json()
        assert "explanation" not in plain["predictions"][0]
        assert plain["predictions"][0]["score"] == pytest.approx(items[0]["score"], abs=1e-12)


def test_an_unseen_category_and_an_imputed_null_are_explained_additively(server, model, spec) -> None:
    described = _describe(server.url)["aliases"]["champion"]
    optional = [f["name"] for f in described["signature"] if not f["required"]]
    assert "revol_util" in optional, described["signature"]
    base = _features(_usable(server, model["records"], 1)[0])
    odd = [{**base, "sub_grade": "Z9"}, {**base, **dict.fromkeys(optional)}]
    reply = _explained(server, odd, "explain=true&top_k=22")
    assert reply.status_code == 200, reply.text
    unseen, imputed = (i["explanation"] for i in reply.json()["predictions"])
    _assert_additive(unseen, 22, spec.feature_columns)
    _assert_additive(imputed, 22, spec.feature_columns)
    assert next(c for c in unseen["contributions"] if c["feature"] == "sub_grade")["value"] == "Z9"
    assert all(c["value"] is None for c in imputed["contributions"] if c["feature"] in optional)


def test_concurrent_requests_each_get_their_own_explanations_or_none(server, model) -> None:
    """Requests scored together (micro-batching) with different top_k, and plain ones among them: each gets what
    it asked for, the same as when it is alone."""
    from concurrent.futures import ThreadPoolExecutor

    records = [_features(r) for r in _usable(server, model["records"], 12)]
    asks = [None if i % 3 == 0 else f"explain=true&top_k={2 + i % 4}" for i in range(len(records))]

    def post(i: int) -> dict[str, Any]:
        query = asks[i]
        reply = http.post(f"{server.url}/predict" + (f"?{query}" if query else ""), json={"record": records[i]},
                          timeout=60)
        assert reply.status_code == 200, reply.text
        return reply.json()["predictions"][0]

    alone = [post(i) for i in range(len(records))]
    with ThreadPoolExecutor(len(records)) as pool:
        together = list(pool.map(post, range(len(records))))
    for ask, one, many in zip(asks, alone, together, strict=True):
        assert many["score"] == pytest.approx(one["score"], abs=1e-12)
        if ask is None:
            assert "explanation" not in many
            continue
        assert [c["feature"] for c in many["explanation"]["contributions"]] == \
            [c["feature"] for c in one["explanation"]["contributions"]]
        assert len(many["explanation"]["contributions"]) == int(ask.rsplit("=", 1)[1])
        assert many["explanation"]["check"]["output"] == pytest.approx(one["explanation"]["check"]["output"],
                                                                      abs=1e-12)


# --- 2. bad parameters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "field", "rule"), [
    ("explain=yes", "explain", "boolean"),
    ("explain=", "explain", "boolean"),
    ("explain=true&explain=false", "explain", "single"),
    ("explain=true&top_k=0", "top_k", "range"),
    ("explain=true&top_k=x", "top_k", "integer"),
    ("explain=true&top_k=2.5", "top_k", "integer"),
    ("explain=true&top_k=23", "top_k", "range"),  # the model has 22 features
    ("top_k=3", "top_k", "requires_explain"),
    ("explain=false&top_k=3", "top_k", "requires_explain"),
])
def test_bad_explain_parameters_get_a_field_level_422(server, model, query, field, rule) -> None:
    record = _features(_usable(server, model["records"], 1)[0])
    for path in ("/predict", f"/models/{model['name']}/predict"):
        reply = _explained(server, [record], query, path)
        assert reply.status_code == 422, reply.text
        detail = reply.json()["detail"]
        assert any(d["field"] == field and d["rule"] == rule and d["message"] for d in detail), detail


def test_an_explained_request_holds_at_most_100_records(server, model) -> None:
    records = [_features(r) for r in _usable(server, model["records"], 101)]
    reply = _explained(server, records)
    assert reply.status_code == 422
    assert reply.json()["detail"][0] | {"message": ""} == {"record": None, "field": "records",
                                                           "rule": "max_explained_records", "message": ""}
    assert _explained(server, records[:100]).status_code == 200
    assert http.post(f"{server.url}/predict", json={"records": records}).status_code == 200  # not explained


# --- 3. versions that cannot explain ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "state", "status"), [
    ("mismatch", "hash_mismatch", "failed: explainer hash mismatch"),
    ("none", "none", "unavailable: version has no explainer record"),
    ("self_test", "self_test_failed", "failed self-test: "),
])
def test_a_version_without_a_working_explainer_predicts_and_answers_409_to_explain(server, mlf, model, kind, state,
                                                                                  status) -> None:
    version = model["versions"][kind]
    record = _features(_usable(server, model["records"], 1)[0])
    with _serving(server, mlf, model, {"champion": version}):
        described = _describe(server.url)["aliases"]["champion"]["explainer"]
        assert described["state"] == state and described["status"].startswith(status), described
        assert "method" not in described
        plain = http.post(f"{server.url}/predict", json={"record": record})
        assert plain.status_code == 200 and plain.json()["predictions"][0]["model_version"] == version
        refused = _explained(server, [record], "explain=true&top_k=2")
        assert refused.status_code == 409, refused.text
        (problem,) = refused.json()["detail"]
        assert problem["field"] == "explain" and problem["rule"] == "explainer_unavailable"
        assert f"v{version} (champion)" in problem["message"] and described["status"] in problem["message"]
        metrics = http.get(f"{server.url}/metrics").text
        series = f'crispflow_serve_explainer{{model="{model["name"]}",status="{state}",version="{version}"}} 1.0'
        assert series in metrics
        assert f'crispflow_serve_explainer{{model="{model["name"]}",status="ready",version="{version}"}} 0.0' \
            in metrics


# --- 4. canary and shadow, 5. the prediction log ----------------------------------------------------------------


def test_each_arm_explains_its_own_answers_and_the_shadow_none(server, mlf, model, spec) -> None:
    versions = model["versions"]
    since = datetime.now(UTC) - timedelta(seconds=5)
    tags = {"crispflow.canary_share": "0.5", "crispflow.shadow_share": "1", "crispflow.entity_key": "loan_id"}
    records = _usable(server, model["records"], 60)
    aliases = {"champion": versions["lr"], "canary": versions["hgb"], "shadow": versions["none"]}
    with _serving(server, mlf, model, aliases, tags, {"canary_share": 0.5, "shadow_share": 1.0,
                                                      "entity_key": "loan_id"}):
        shadow = _describe(server.url)["aliases"]["shadow"]["explainer"]
        assert shadow["note"] == "shadow arms are never explained"  # and v4 has no explainer: no 409 for it
        reply = _explained(server, records, "explain=true&top_k=4")
        assert reply.status_code == 200, reply.text
        items = reply.json()["predictions"]
        plain = http.post(f"{server.url}/predict", json={"records": records[:5]})
        assert plain.status_code == 200
    by_arm = {(i["alias"], i["model_version"], i["explanation"]["method"]) for i in items}
    assert by_arm == {("champion", versions["lr"], "linear_exact"), ("canary", versions["hgb"], "tree_shap")}
    for item in items:
        _assert_additive(item["explanation"], 4, spec.feature_columns)
    explained_ids = {i["request_id"] for i in items}
    plain_ids = {i["request_id"] for i in plain.json()["predictions"]}

    def logged() -> pd.DataFrame | None:
        frame = read_predictions(str(server.log_root), model["name"], since,
                                 datetime.now(UTC) + timedelta(minutes=1), with_feedback=False)
        mine = frame[frame["request_id"].isin(explained_ids | plain_ids)]
        return mine if len(mine) == 2 * (len(explained_ids) + len(plain_ids)) else None  # served + shadow rows

    rows = _wait(logged, 30, "served and shadow rows in the log")
    served = rows[rows["served"] & rows["request_id"].isin(explained_ids)].set_index("request_id")
    for item in items:  # the logged explanation is the one returned
        assert json.loads(served.loc[item["request_id"], "explanation"]) == item["explanation"]
    assert rows.loc[~rows["served"], "explanation"].isna().all()  # the shadow's rows: never explained
    assert set(rows.loc[~rows["served"], "version"]) == {versions["none"]}
    assert rows.loc[rows["request_id"].isin(plain_ids), "explanation"].isna().all()  # not asked: not explained
    metrics = http.get(f"{server.url}/metrics").text
    for kind in ("lr", "hgb"):
        arm_rows = [i for i in items if i["model_version"] == versions[kind]]
        prefix = f'crispflow_serve_explained_records_total{{model="{model["name"]}",version="{versions[kind]}"}} '
        line = next(x for x in metrics.splitlines() if x.startswith(prefix))
        assert float(line.removeprefix(prefix)) >= len(arm_rows) > 0


# --- 6. a record that cannot be fetched now is fetched later ----------------------------------------------------


def test_an_explainer_record_the_store_cannot_fetch_is_retried_without_reloading_the_model(mlflow_server,
                                                                                          model) -> None:
    """The artifact store refuses the record (403 from a proxy in front of the real MLflow server): the version
    serves without explainer ("unavailable"), and a poll after `refused_retry` seconds builds it."""
    from mlflow import MlflowClient
    from support.fault_proxy import Fault, FaultProxy

    from crispflow.serving.metrics import ServingMetrics
    from crispflow.serving.models import ModelStore

    metrics = ServingMetrics()
    name, version = model["name"], model["versions"]["lr"]
    gauge = 'crispflow_serve_explainer{{model="{}",status="{}",version="{}"}} 1.0'
    with FaultProxy(mlflow_server.url) as proxy:
        for _ in range(5):  # however many requests the download makes, each is refused
            proxy.arm(Fault("GET", "/artifacts", "explainer", "403"))
        store = ModelStore(name, lambda: MlflowClient(proxy.url), refused_retry=5.0, metrics=metrics)
        first = store.poll_once().champion
        assert first is not None and first.version == version and proxy.fired
        assert first.explainer is None and first.explainer_state == "unavailable"
        assert first.explainer_status.startswith("unavailable: the explainer record runs:/")
        assert "could not be fetched" in first.explainer_status
        assert gauge.format(name, "unavailable", version) in metrics.render().decode()
        proxy.disarm()
        assert store.poll_once().champion.explainer_state == "unavailable"  # not before refused_retry seconds
        time.sleep(5.2)
        again = store.poll_once().champion
    assert again is not None and again.explainer_status.startswith("ready: linear_exact")
    assert again.model is first.model  # the verified model was not loaded again
    assert gauge.format(name, "ready", version) in metrics.render().decode()


# --- 7. the compiled scorer ---------------------------------------------------------------------------------------


def _scores(fitted: Any, spec, records: list[dict[str, Any]]) -> np.ndarray:
    """P(positive) of the fitted model itself on the records, as a frame of the published dtypes."""
    frame = pd.DataFrame([_features(r) for r in records])[spec.feature_columns]
    return fitted.predict_proba(frame)[:, 1]


def _scorer_series(name: str, version: str, kind: str, value: float) -> str:
    return f'crispflow_serve_scorer{{kind="{kind}",model="{name}",version="{version}"}} {value}'


@pytest.mark.parametrize("kind", ["lr", "hgb"])
def test_each_version_is_scored_by_its_verified_compiled_scorer(server, mlf, model, spec, kind) -> None:
    version = model["versions"][kind]
    records = _usable(server, model["records"], 60)
    with _serving(server, mlf, model, {"champion": version}):
        described = _describe(server.url)["aliases"]["champion"]["scorer"]
        assert described["kind"] == "compiled", described
        assert described["status"].startswith(f"compiled: {'linear' if kind == 'lr' else 'tree'}")
        reply = http.post(f"{server.url}/predict", json={"records": [_features(r) for r in records]}, timeout=60)
        assert reply.status_code == 200, reply.text
        scores = np.array([item["score"] for item in reply.json()["predictions"]])
        assert np.allclose(scores, _scores(model["fitted"][kind], spec, records), rtol=0, atol=1e-9)
        metrics = http.get(f"{server.url}/metrics").text
        assert _scorer_series(model["name"], version, "compiled", 1.0) in metrics
        assert _scorer_series(model["name"], version, "pipeline", 0.0) in metrics


def test_a_compiled_scorer_that_disagrees_with_the_model_is_not_used(model, spec, mlflow_server, tmp_path,
                                                                      monkeypatch) -> None:
    """A compiled scorer off by 1e-6 (more than the 1e-9 it must agree to): the server scores with the model's
    pipeline, says so in /model and on /metrics, and its answers and explanations are the model's own."""
    from crispflow.model.compiled import CompiledScorer

    exact = CompiledScorer.response_matrix
    monkeypatch.setattr(CompiledScorer, "response_matrix", lambda self, x: exact(self, x) + 1e-6)
    config = ServeConfig(model=model["name"], tracking_uri=mlflow_server.url, predictions_url=str(tmp_path),
                         poll_interval=0.2, log_flush_interval=0.2, only=(model["name"],))
    version = model["versions"]["lr"]
    with Running(config) as running:
        _wait(lambda: _champion(running.url) == version, 120, "champion loaded")
        described = _describe(running.url)["aliases"]["champion"]["scorer"]
        assert described["kind"] == "pipeline", described
        assert "differs from the model's by" in described["status"] and "tolerance 1e-09" in described["status"]
        metrics = http.get(f"{running.url}/metrics").text
        assert _scorer_series(model["name"], version, "pipeline", 1.0) in metrics
        assert _scorer_series(model["name"], version, "compiled", 0.0) in metrics
        records = _usable(running, model["records"], 30)
        reply = http.post(f"{running.url}/predict", json={"records": [_features(r) for r in records]}, timeout=60)
        assert reply.status_code == 200, reply.text
        scores = np.array([item["score"] for item in reply.json()["predictions"]])
        assert np.allclose(scores, _scores(model["fitted"]["lr"], spec, records), rtol=0, atol=1e-12)
        explained = _explained(running, [_features(records[0])], "explain=true&top_k=3")
        assert explained.status_code == 200, explained.text
        _assert_additive(explained.json()["predictions"][0]["explanation"], 3, spec.feature_columns)
