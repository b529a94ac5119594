"""Models that would run code when loaded are refused by crispflow's rules, whatever their MLmodel says.

Each bad version is registered straight through MLflow (as anyone with write access could) and completed the way
crispflow completes its own: the correct artifact hash, blessed, a threshold. A marker file shows whether any of
its code ran; the registry, the model server, batch scoring and the canary re-scoring all refuse it unrun.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from support.mlflow_server import register_versions
from support.serving import Running, http

from crispflow.model import registry
from crispflow.model.registry import RegistryError
from crispflow.release import promotion
from crispflow.release.canary import CanaryPolicy
from crispflow.release.canary_analysis import settle_canary
from crispflow.release.promotion import Ledger
from crispflow.serving.batch_scoring import load_model, resolve_model
from crispflow.serving.config import ServeConfig

pytest_plugins = ["support.mlflow_server"]
PIPELINE = f"t_unsafe_{uuid.uuid4().hex[:6]}"
NAME = registry.model_name(PIPELINE)
FEATURES = ["int_rate", "annual_inc"]


def _touch(path: str) -> None:
    Path(path).touch()


class Payload:
    """Unpickling it creates `marker`: what any code in a pickle could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def predict(self, x: Any) -> Any:
        return x

    def __reduce__(self) -> tuple[Any, ...]:
        return _touch, (self.marker,)


class Sneaky(LogisticRegression):
    """A class from outside crispflow's trusted modules: constructing it from a skops file creates `marker`."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        _touch(state["marker"])
        super().__setstate__(state)


@pytest.fixture(scope="module")
def mlf(mlflow_server):
    return registry.client(mlflow_server.url)


@pytest.fixture(scope="module")
def loans() -> pd.DataFrame:
    return pd.read_parquet("include/data/lending_club.parquet").head(1000)


@pytest.fixture(scope="module")
def markers() -> Path:
    return Path(tempfile.mkdtemp(prefix="crispflow-unsafe-"))


@pytest.fixture(scope="module")
def versions(mlf, loans, markers) -> dict[str, str]:
    """`good`: registered by crispflow; `pickle` and `foreign`: registered through MLflow directly."""
    x, y = loans[FEATURES].astype("float64"), loans["Class"] == "bad"
    (good,) = register_versions(mlf, NAME, PIPELINE, x, [LogisticRegression(max_iter=300).fit(x, y)])
    sneaky = Sneaky(max_iter=300).fit(x, y)
    sneaky.marker = str(markers / "foreign")
    out = {"good": good,
           "pickle": _register_directly(mlf, "pickle", Payload(markers / "pickle"), serialization_format="pickle"),
           "foreign": _register_directly(mlf, "foreign", sneaky, serialization_format="skops",
                                         skops_trusted_types=[f"{Sneaky.__module__}.Sneaky"])}
    (markers / "foreign").unlink()  # MLflow's skops save loads the file once to check it; from here on: never
    return out


def _register_directly(mlf, kind: str, model: Any, **log_args: Any) -> str:
    """A version logged and registered with MLflow's own API, then tagged as crispflow tags complete versions."""
    run_id = registry.find_or_create_run(mlf, PIPELINE, f"dag/{kind}/train", kind)
    with mlflow.start_run(run_id=run_id):
        # explicit requirements: MLflow would otherwise infer them by loading the model in a subprocess
        info = mlflow.sklearn.log_model(model, name="model", pip_requirements=registry.pip_requirements(), **log_args)
    mv = mlf.create_model_version(NAME, source=info.model_uri, run_id=run_id, model_id=info.model_id)
    while (mv := mlf.get_model_version(NAME, mv.version)).status != "READY":
        time.sleep(0.2)
    with tempfile.TemporaryDirectory() as tmp:
        sha = registry.tree_sha256(Path(mlflow.artifacts.download_artifacts(mv.source, dst_path=tmp)))
    for key, value in {registry.SHA_TAG: sha, "crispflow.blessed": "true", "crispflow.threshold": "0.5"}.items():
        mlf.set_model_version_tag(NAME, mv.version, key, value)
    return str(mv.version)


RULES = {"pickle": "serialization_format is 'pickle'", "foreign": "Sneaky'] are not allowed"}


def test_allowed_types_are_classes_of_the_trusted_modules_only() -> None:
    ok = ["crispflow.model.features.FrameTyper", "numpy.dtype",
          "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]
    assert registry.allowed_types(ok, "m") == ok
    for bad in ("builtins.eval", "os.system", "numpy.load", "sklearn.base.clone", "numpy.dtype.mro", "numpy.nope"):
        with pytest.raises(RegistryError, match="not allowed"):
            registry.allowed_types(["numpy.dtype", bad], "m")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pickle", "foreign"])
def test_load_verified_refuses_it_unrun(mlf, versions, markers, kind, tmp_path) -> None:
    version = versions[kind]
    with pytest.raises(RegistryError, match=rf"{NAME} v{version}: .*{RULES[kind]}"):
        registry.load_verified(mlf, NAME, version, cache=tmp_path)
    with pytest.raises(RegistryError, match=RULES[kind]):  # a copy loaded directly: the same rules
        registry.load_files(registry._hash_checked_copy(mlf.get_model_version(NAME, version), tmp_path))
    assert not (markers / kind).exists()
    assert registry.load_verified(mlf, NAME, versions["good"], cache=tmp_path).predict_proba is not None


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pickle", "foreign"])
def test_batch_scoring_refuses_it_unrun(mlf, versions, markers, kind) -> None:
    registry.set_alias(mlf, NAME, "batch", versions[kind])
    ref = resolve_model(mlf, PIPELINE, "batch")
    with pytest.raises(RegistryError, match=RULES[kind]):
        load_model(mlf, ref)
    assert not (markers / kind).exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pickle", "foreign"])
def test_canary_rescoring_refuses_it_unrun(mlf, versions, markers, kind, tmp_path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    for alias in promotion.SERVING_ALIASES:
        if registry.alias_version(mlf, NAME, alias):
            mlf.delete_registered_model_alias(NAME, alias)
    promotion.apply(mlf, ledger, NAME, promotion.cold_start({}, versions["good"], "first"), move_key="cold",
                    actor="t", person="t")
    deployed = promotion.deploy_version(mlf, ledger, NAME, versions[kind], strategy="canary", share=0.5,
                                        reason="blessed", move_key="deploy", person="t")
    assert deployed["action"] == "deploy_canary"
    now = pd.Timestamp.now(tz="UTC").to_pydatetime()
    with pytest.raises(RegistryError, match=RULES[kind]):
        settle_canary(mlf, ledger, NAME, tmp_path, start=now, end=now, policy=CanaryPolicy(), move_key="analyse",
                      run_key="run-1", person="t")
    assert not (markers / kind).exists()
    assert promotion.registry_state(mlf, NAME)["canary"] == versions[kind]  # nothing decided on a refused model


@pytest.mark.slow
def test_the_model_server_refuses_it_unrun(mlf, mlflow_server, versions, markers) -> None:
    for alias in promotion.SERVING_ALIASES:
        if registry.alias_version(mlf, NAME, alias):
            mlf.delete_registered_model_alias(NAME, alias)
    registry.set_alias(mlf, NAME, "champion", versions["pickle"])
    config = ServeConfig(model=NAME, only=(NAME,), tracking_uri=mlflow_server.url, predictions_url=None,
                         poll_interval=0.2)
    with Running(config) as running:
        url = running.url
        deadline = time.monotonic() + 30
        while not (refused := http.get(f"{url}/model").json()["refused"].get(versions["pickle"])):
            assert time.monotonic() < deadline, "the bad champion was never refused"
            time.sleep(0.1)
        assert refused.startswith("invalid") and "serialization_format" in refused
        ready = http.get(f"{url}/ready")
        assert ready.status_code == 503 and f"v{versions['pickle']}" in ready.json()["reason"]
        record = {"int_rate": 0.1, "annual_inc": 50_000.0}
        assert http.post(f"{url}/predict", json={"record": record}).status_code == 503
    assert not (markers / "pickle").exists()
