"""The registry against a real MLflow server: one version per run key, complete versions only, hash-checked loads."""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from crispflow.model import registry
from crispflow.model.registry import RegistryError

pytest_plugins = ["support.mlflow_server"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlf(mlflow_server):
    return registry.client(mlflow_server.url)


@pytest.fixture(scope="module")
def model_and_example():
    df = pd.read_parquet("include/data/lending_club.parquet").head(2000)
    x = df[["int_rate", "annual_inc", "revol_util"]].astype("float64")
    return LogisticRegression(max_iter=500).fit(x, df["Class"] == "bad"), x


def test_a_retried_registration_yields_one_version(mlf, model_and_example) -> None:
    model, x = model_and_example
    run_id = registry.find_or_create_run(mlf, "t_reg", "dag/run1/train", "train")
    assert registry.find_or_create_run(mlf, "t_reg", "dag/run1/train", "train") == run_id
    first = registry.register(mlf, name="crispflow-t_reg", run_id=run_id, run_key="dag/run1/train", model=model,
                              example=x, tags={"crispflow.dataset_version_id": "ds-1"})
    again = registry.register(mlf, name="crispflow-t_reg", run_id=run_id, run_key="dag/run1/train", model=model,
                              example=x, tags={"crispflow.dataset_version_id": "ds-1"})
    assert first.created and not again.created and again.version == first.version
    assert len(mlf.search_model_versions("name = 'crispflow-t_reg'")) == 1
    mv = mlf.get_model_version("crispflow-t_reg", first.version)
    assert mv.tags[registry.SHA_TAG] == first.artifact_sha256
    assert mv.tags["crispflow.dataset_version_id"] == "ds-1"


def test_aliases_only_point_at_complete_versions(mlf, model_and_example) -> None:
    model, x = model_and_example
    run_id = registry.find_or_create_run(mlf, "t_alias", "dag/run2/train", "train")
    done = registry.register(mlf, name="crispflow-t_alias", run_id=run_id, run_key="dag/run2/train", model=model,
                             example=x, tags={})
    registry.set_alias(mlf, "crispflow-t_alias", "champion", done.version)
    # a version whose registration was interrupted before its hash was recorded
    source = mlf.get_model_version("crispflow-t_alias", done.version).source
    half = mlf.create_model_version("crispflow-t_alias", source=source, run_id=run_id,
                                    model_id=source.rsplit("/", 1)[-1])
    with pytest.raises(RegistryError, match="not complete"):
        registry.set_alias(mlf, "crispflow-t_alias", "champion", str(half.version))
    assert registry.alias_version(mlf, "crispflow-t_alias", "champion").version == done.version
    assert registry.alias_version(mlf, "crispflow-t_alias", "nobody") is None


def test_a_tampered_artifact_is_refused(mlf, mlflow_server, model_and_example, tmp_path) -> None:
    model, x = model_and_example
    run_id = registry.find_or_create_run(mlf, "t_tamper", "dag/run3/train", "train")
    reg = registry.register(mlf, name="crispflow-t_tamper", run_id=run_id, run_key="dag/run3/train", model=model,
                            example=x, tags={})
    worker1, worker2 = tmp_path / "worker1", tmp_path / "worker2"
    loaded = registry.load_verified(mlf, "crispflow-t_tamper", reg.version, cache=worker1)
    assert (loaded.predict_proba(x)[:, 1] == model.predict_proba(x)[:, 1]).all()
    assert [p.name for p in worker1.iterdir()] == [reg.artifact_sha256]  # kept under its hash, nothing else
    (target,) = [p for p in mlflow_server.artifacts.rglob("model.skops")
                 if p.parent.name == "artifacts" and reg.artifact_sha256 and _is_version(mlf, reg, p)]
    target.write_bytes(target.read_bytes() + b"\0")
    with pytest.raises(RegistryError, match="does not match the recorded"):  # a worker without a copy
        registry.load_verified(mlf, "crispflow-t_tamper", reg.version, cache=worker2)
    assert not list(worker2.iterdir())  # nothing of the tampered download is kept
    # the copy verified before the tampering still matches the recorded hash: that is what loads
    again = registry.load_verified(mlf, "crispflow-t_tamper", reg.version, cache=worker1)
    assert (again.predict_proba(x)[:, 1] == model.predict_proba(x)[:, 1]).all()
    # a cached copy changed on disk is fetched again, and the store's tampered files are refused
    (cached,) = (worker1 / reg.artifact_sha256).rglob("model.skops")
    cached.write_bytes(cached.read_bytes() + b"\0")
    with pytest.raises(RegistryError, match="does not match the recorded"):
        registry.load_verified(mlf, "crispflow-t_tamper", reg.version, cache=worker1)
    assert not list(worker1.iterdir())


def _is_version(mlf, reg, path) -> bool:
    source = mlf.get_model_version(reg.name, reg.version).source  # models:/m-<id>
    return source.rsplit("/", 1)[-1] in path.parts
