"""The Models and Promotions pages' data against a real MLflow server, a SQLite promotion ledger, a lake and a
drift store written by crispflow's own functions: versions with real verdicts and evaluations, lineage to the
dataset manifest, ledger entries and drift windows; names from URLs validated (NotFound, never a traversal)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.mlflow_server import small_versions
from support.model_versions import holdout, judge_version

from crispflow.data.datasets import QUALITY_HTML, commit_version, purge
from crispflow.erasure.models import DEADLINE, PENDING
from crispflow.lake import Lake, write_atomic
from crispflow.model import registry
from crispflow.monitoring.store import summarise, write_window
from crispflow.release import promotion
from crispflow.release.promotion import Ledger
from crispflow.ui import NotFound
from crispflow.ui.models_view import (
    data_docs_file,
    model_page,
    models_index,
    verdict_view,
    version_page,
    version_status,
)
from crispflow.ui.promotions_view import promotions_page

pytest_plugins = ["support.mlflow_server"]
PIPELINE = "t_ui_models"
NAME = registry.model_name(PIPELINE)
DS = {"a": "ds-00000000000000aa", "b": "ds-00000000000000bb", "window": "ds-00000000000000cc"}
BATCH = "b-0123456789abcdef"
CARD = "<!DOCTYPE html><html><body><h1>Card v{v}</h1><script>alert(1)</script></body></html>"


@pytest.fixture(scope="module")
def mlf(mlflow_server):
    return registry.client(mlflow_server.url)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    """Two monthly versions (with Data Docs) and a training window composed of both (its page: the newest
    parent's, named in its manifest); a staged batch's page."""
    lake = Lake(tmp_path_factory.mktemp("lake"))
    source = {"source": "loans", "rows_read": 100, "rows_in_interval": 90, "raw": "raw/x.csv",
              "fingerprint": {"kind": "file", "url": "file:///data/loans.csv", "sha256": "e" * 64, "bytes": 4096}}
    for key, month in (("a", 1), ("b", 2)):
        write_atomic(lake.version_dir(PIPELINE, DS[key]) / QUALITY_HTML, f"<html>docs {key}</html>".encode())
        commit_version(lake, PIPELINE, DS[key], {
            "dataset_version_id": DS[key], "pipeline": PIPELINE, "batch_id": BATCH,
            "interval": {"start": f"2024-0{month}-01", "end": f"2024-0{month + 1}-01"},
            "rows": {"in": 100, "published": 90, "quarantined": 10}, "sources": [source],
            "files": {"quality_html": f"curated/{PIPELINE}/{DS[key]}/{QUALITY_HTML}"},
            "published_by": {"dag_id": "ingest_validate", "run_id": f"r{month}", "at": f"2024-0{month + 1}-02"}})
    commit_version(lake, PIPELINE, DS["window"], {
        "dataset_version_id": DS["window"], "pipeline": PIPELINE, "batch_id": None, "parents": [DS["a"], DS["b"]],
        "interval": {"start": "2024-01-01", "end": "2024-03-01"}, "sources": [source, source],
        "rows": {"in": 180, "published": 170, "quarantined": 0, "duplicates_across_parents": 10},
        "files": {"quality_html": f"curated/{PIPELINE}/{DS['b']}/{QUALITY_HTML}"},
        "published_by": {"dag_id": "retrain_on_drift", "run_id": "r3", "at": "2024-03-02"}})
    write_atomic(lake.batch_dir(PIPELINE, BATCH) / QUALITY_HTML, b"<html>batch docs</html>")
    return lake


@pytest.fixture(scope="module")
def served(mlf, tmp_path_factory) -> dict:
    """v1 champion (cold start), v2 a live canary judged against it, v3 registered but not judged yet; every move
    through a ledger; drift windows of v1 (champion) and v2 (canary)."""
    versions = small_versions(mlf, NAME, PIPELINE, 3, rows=400)
    v1, v2, v3 = versions
    y, good, weak = holdout()
    judge_version(mlf, NAME, v1, y=y, score=weak, pipeline=PIPELINE, dataset_version_id=DS["a"],
                  card_html=CARD.format(v=1))
    judge_version(mlf, NAME, v2, y=y, score=good, champion_score=weak, pipeline=PIPELINE,
                  dataset_version_id=DS["window"], card_html=CARD.format(v=2))
    mlf.delete_model_version_tag(NAME, v3, "crispflow.blessed")
    for alias in promotion.SERVING_ALIASES:
        if registry.alias_version(mlf, NAME, alias):
            mlf.delete_registered_model_alias(NAME, alias)
    ledger = Ledger(f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}")
    promotion.apply(mlf, ledger, NAME, promotion.cold_start({}, v1, "first blessed model"), move_key="t/cold",
                    actor="t/cold", person="airflow:scheduled")
    promotion.deploy_version(mlf, ledger, NAME, v2, strategy="canary", share=0.3, reason="blessed by the gate",
                             move_key="t/deploy", person="ana")
    registry.set_alias(mlf, NAME, registry.CHALLENGER, v3)
    root = tmp_path_factory.mktemp("predictions")
    end = datetime(2026, 12, 2, 10, tzinfo=UTC)
    for hour in range(3):
        for alias, version, share in (("champion", v1, 0.5), ("canary", v2, 0.0)):
            stop = end + timedelta(hours=hour)
            report = {"status": "drift" if share else "ok", "drift": bool(share), "drift_share": share,
                      "drifted_features": ["int_rate"] if share else [],
                      "features": {"int_rate": {"test": "ks", "statistic": 0.3, "p_adjusted": 0.001, "psi": 0.4}}}
            write_window(root, summarise(report, model=NAME, alias=alias, version=version,
                                         start=stop - timedelta(hours=1), end=stop, rows=500, labelled_rows=10,
                                         report_path="r"), report, "<html></html>")
    return {"versions": versions, "ledger": ledger, "root": root}


# --------------------------------------------------------------------------------------------- no server


def test_data_docs_of_a_batch_a_version_and_a_composed_window(lake) -> None:
    assert Path(data_docs_file(lake, PIPELINE, BATCH)).read_text() == "<html>batch docs</html>"
    assert Path(data_docs_file(lake, PIPELINE, DS["a"])).read_text() == "<html>docs a</html>"
    assert Path(data_docs_file(lake, PIPELINE, DS["window"])).read_text() == "<html>docs b</html>"  # newest parent


@pytest.mark.parametrize(("pipeline", "ref"), [
    (PIPELINE, "../../etc/passwd"), (PIPELINE, "/etc/passwd"), (PIPELINE, "ds-00000000000000aa/../x"),
    (PIPELINE, "b-0123456789abcdef/../../x"), ("../t_ui_models", DS["a"]), ("/tmp", DS["a"]),
    (PIPELINE, "ds-00000000000000AA"), (PIPELINE, "ds-00000000000000dd"), ("other", DS["a"]), (PIPELINE, ""),
])
def test_data_docs_refuse_anything_but_an_existing_page(lake, pipeline, ref) -> None:
    with pytest.raises(NotFound):
        data_docs_file(lake, pipeline, ref)


def test_a_manifest_naming_a_page_outside_its_pipeline_is_not_followed(lake) -> None:
    forged = "ds-00000000000000ff"
    commit_version(lake, PIPELINE, forged, {"dataset_version_id": forged,
                                            "files": {"quality_html": "curated/../../../etc/passwd"}})
    with pytest.raises(NotFound):
        data_docs_file(lake, PIPELINE, forged)


def test_version_status_and_every_check_keeps_its_numbers() -> None:
    assert version_status({"crispflow.blessed": "true"}) == "blessed"
    assert version_status({"crispflow.blessed": "true", "crispflow.forced_by": "7"}) == "forced"
    assert version_status({"crispflow.blessed": "false"}) == "not_blessed"
    assert version_status({}) == "not_judged"
    view = verdict_view({"blessed": False, "reasons": ["size"], "checks": [
        {"name": "size_budget", "key": "size_bytes", "challenger": 9.0, "champion": 2.0, "max_ratio": 3.0,
         "ratio": 4.5, "passed": False, "reason": "size"}]})
    assert view["checks"] == [{"name": "size_budget", "passed": False, "reason": "size", "slices": [],
                               "hypothesis": None, "why": None, "numbers": {
                                   "key": "size_bytes", "challenger": 9.0, "champion": 2.0, "max_ratio": 3.0,
                                   "ratio": 4.5}}]


# --------------------------------------------------------------------------------------------- real server


@pytest.mark.slow
def test_models_index_lists_crispflow_models_only(mlf, served) -> None:
    mlf.create_registered_model("someone-elses-model")
    found = {m["name"]: m for m in models_index(mlf)}
    assert "someone-elses-model" not in found
    mine = found[NAME]
    v1, v2, v3 = served["versions"]
    assert mine["pipeline"] == PIPELINE and mine["versions"] == 3 and mine["latest_version"] == v3
    assert mine["aliases"] == {"champion": v1, "canary": v2, "shadow": None, "challenger": v3, "previous": None}


@pytest.mark.slow
def test_model_page_versions_newest_first_with_aliases_status_and_metric(mlf, served) -> None:
    v1, v2, v3 = served["versions"]
    page = model_page(mlf, NAME)
    rows = {r["version"]: r for r in page["versions"]}
    assert [r["version"] for r in page["versions"]] == [v3, v2, v1] and not page["truncated"]
    assert page["canary_share"] == 0.3
    assert rows[v1]["aliases"] == ["champion"] and rows[v2]["aliases"] == ["canary"]
    assert rows[v3]["aliases"] == ["challenger"]
    assert (rows[v1]["status"], rows[v2]["status"], rows[v3]["status"]) == ("blessed", "blessed", "not_judged")
    metric = rows[v2]["primary_metric"]
    assert metric["name"] == "roc_auc" and 0.5 < metric["value"] <= 1.0
    assert rows[v2]["dataset_version_id"] == DS["window"] and rows[v2]["created"].startswith("20")
    assert rows[v3]["primary_metric"]["value"] is None
    short = model_page(mlf, NAME, limit=2)
    assert [r["version"] for r in short["versions"]] == [v3, v2] and short["truncated"]
    assert rows[v1]["erasure"] is None
    mlf.set_model_version_tag(NAME, v1, PENDING, "er-0123456789abcdef")
    mlf.set_model_version_tag(NAME, v1, DEADLINE, "2027-01-02")
    try:
        flagged = {r["version"]: r for r in model_page(mlf, NAME)["versions"]}[v1]["erasure"]
        assert flagged == {"id": "er-0123456789abcdef", "deadline": "2027-01-02"}
    finally:
        mlf.delete_model_version_tag(NAME, v1, PENDING)
        mlf.delete_model_version_tag(NAME, v1, DEADLINE)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["crispflow-nope", "../crispflow-x", "crispflow-", "Crispflow-x", "x", ""])
def test_unknown_or_invalid_models_are_not_found(mlf, name) -> None:
    with pytest.raises(NotFound):
        model_page(mlf, name)


class CountingClient:
    """The real client, counting which of its methods are called."""

    def __init__(self, real) -> None:
        self.real, self.calls = real, []

    def __getattr__(self, name):
        self.calls.append(name)
        return getattr(self.real, name)


@pytest.mark.slow
def test_model_page_of_200_versions_is_one_search_and_downloads_nothing(mlf, served) -> None:
    name = registry.model_name("t_ui_many")
    template = mlf.get_model_version(NAME, served["versions"][0])
    mlf.create_registered_model(name)
    for _ in range(205):
        mlf.create_model_version(name, source=template.source, run_id=template.run_id,
                                 model_id=template.source.rsplit("/", 1)[-1])
    counting = CountingClient(mlf)
    page = model_page(counting, name, limit=200)
    assert len(page["versions"]) == 200 and page["truncated"]
    assert page["versions"][0]["version"] == "205" and page["versions"][-1]["version"] == "6"
    assert counting.calls == ["get_registered_model", "search_model_versions"]


@pytest.mark.slow
def test_version_page_verdict_metrics_card_and_lineage(mlf, served, lake) -> None:
    v1, v2, _ = served["versions"]
    page = version_page(mlf, lake, served["ledger"], served["root"], NAME, v2)
    assert page["problems"] == [] and page["aliases"] == ["canary"]
    verdict = page["verdict"]
    assert verdict["blessed"] and verdict["mode"] == "versus_champion"
    checks = {c["name"]: c for c in verdict["checks"]}
    assert set(checks) >= {"non_inferiority", "latency_budget", "size_budget"}
    numbers = checks["non_inferiority"]["numbers"]
    assert {"estimate", "ci_low", "ci_high", "margin", "challenger", "champion"} <= set(numbers)
    assert numbers["ci_low"] <= numbers["estimate"] <= numbers["ci_high"]
    metrics = {m["name"]: m for m in page["metrics"]}
    assert metrics["roc_auc"]["ci_low"] <= metrics["roc_auc"]["value"] <= metrics["roc_auc"]["ci_high"]
    assert page["model_card_html"] == CARD.format(v=2)  # as text: the plugin serves it sandboxed
    lineage = page["lineage"]
    dataset = lineage["dataset"]
    assert dataset["dataset_version_id"] == DS["window"] and dataset["data_docs"] == DS["window"]
    assert [p["dataset_version_id"] for p in dataset["manifest"]["parents"]] == [DS["a"], DS["b"]]
    assert dataset["manifest"]["parents"][0]["interval"] == {"start": "2024-01-01", "end": "2024-02-01"}
    assert dataset["manifest"]["sources"][0]["fingerprint"]["sha256"] == "e" * 64
    run = lineage["run"]
    assert run["run_id"] == page["run_id"] and run["experiment_id"] and run["run_name"] == "train"
    assert [(e["action"], e["person"]) for e in lineage["ledger"]] == [("deploy_canary", "ana")]
    windows = lineage["drift_windows"]
    assert [(w["alias"], w["window_key"]) for w in windows] == [
        ("canary", "20261202T120000Z"), ("canary", "20261202T110000Z"), ("canary", "20261202T100000Z")]
    first = version_page(mlf, lake, served["ledger"], served["root"], NAME, v1)
    assert [e["action"] for e in first["lineage"]["ledger"]] == ["cold_start"]  # the canary's move names v2 only
    assert {w["alias"] for w in first["lineage"]["drift_windows"]} == {"champion"}
    assert first["lineage"]["drift_windows"][0]["drifted_features"] == ["int_rate"]


@pytest.mark.slow
def test_a_version_without_records_renders_with_what_there_is(mlf, served, lake) -> None:
    v3 = served["versions"][2]
    page = version_page(mlf, lake, None, None, NAME, v3)
    assert page["status"] == "not_judged" and page["verdict"] is None and page["metrics"] == []
    assert page["model_card_html"] is None and page["lineage"]["dataset"] is None
    assert page["lineage"]["ledger"] == [] and page["lineage"]["drift_windows"] == []


@pytest.mark.slow
@pytest.mark.parametrize("version", ["999", "0", "-1", "1.0", "../1", "", "01"])
def test_a_version_that_does_not_exist_is_not_found(mlf, served, lake, version) -> None:
    with pytest.raises(NotFound):
        version_page(mlf, lake, served["ledger"], served["root"], NAME, version)


@pytest.mark.slow
def test_promotions_page_follows_the_ledger_and_reports_divergence(mlf, tmp_path) -> None:
    pipeline = "t_ui_promos"
    name = registry.model_name(pipeline)
    v1, v2 = small_versions(mlf, name, pipeline, 2, rows=300)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    promotion.apply(mlf, ledger, name, promotion.cold_start({}, v1, "first blessed model"), move_key="k/cold",
                    actor="k/cold", person="airflow:scheduled")
    promotion.deploy_version(mlf, ledger, name, v2, strategy="canary", share=0.2, reason="blessed",
                             move_key="train/r2/deploy", person="ana")

    live = promotions_page(mlf, ledger, name)
    assert live["aliases"]["champion"] == v1 and live["champion"] == v1
    assert live["canary"]["version"] == v2 and live["canary"]["share"] == 0.2 and live["canary"]["deployed_at"]
    assert live["can_promote_canary"] and not live["can_rollback"] and live["divergences"] == []
    assert [(e["seq"], e["action"], e["person"]) for e in live["entries"]] == [
        (2, "deploy_canary", "ana"), (1, "cold_start", "airflow:scheduled")]
    assert live["entries"][0]["moves"] == {"canary": [None, v2]} and live["entries"][0]["actor"] == "train/r2/deploy"

    state = promotion.current_state(mlf, ledger, name)
    promotion.apply(mlf, ledger, name, promotion.promote_canary(state, v2, "non-inferior", {"labels": 300}),
                    move_key="k/promote", actor="k/promote", person="bea")
    promoted = promotions_page(mlf, ledger, name)
    assert (promoted["champion"], promoted["previous"], promoted["canary"]) == (v2, v1, None)
    assert promoted["can_rollback"] and not promoted["can_promote_canary"]
    assert promoted["entries"][0]["evidence"] == {"labels": 300} and promoted["total_entries"] == 3

    mlf.set_registered_model_alias(name, "champion", v1)  # moved in MLflow directly, outside crispflow
    moved = promotions_page(mlf, ledger, name)
    assert moved["aliases"]["champion"] == v1 and moved["champion"] == v2  # the ledger's view decides
    assert moved["divergences"] == [f"{name}: champion is v{v1} in the registry but v{v2} in the ledger "
                                    "(moved outside crispflow)"]
    with pytest.raises(NotFound):
        promotions_page(mlf, ledger, "crispflow-../x")


def test_a_version_trained_on_a_purged_dataset_names_its_successor(mlf, served, tmp_path) -> None:
    """After an erasure the dataset version a model was trained on is a tombstone: the page says so and names
    the successor without the subject (the registry still names the old id)."""
    lake = Lake(tmp_path / "lake")
    for key in ("a", "b"):
        commit_version(lake, PIPELINE, DS[key], {"dataset_version_id": DS[key], "pipeline": PIPELINE,
                                                 "content_sha256": key * 64, "rows": {"published": 90}})
    purge(lake, PIPELINE, DS["a"], DS["b"], "er-0123456789abcdef")
    page = version_page(mlf, lake, None, None, NAME, served["versions"][0])
    dataset = page["lineage"]["dataset"]
    assert dataset["dataset_version_id"] == DS["a"] and page["problems"] == []
    purged = dataset["manifest"]["purged"]
    assert (purged["superseded_by"], purged["erasure"]) == (DS["b"], "er-0123456789abcdef") and purged["purged_at"]
    assert purged["live"] == DS["b"]
    rows = {r["version"]: r for r in model_page(mlf, NAME, lake=lake)["versions"]}  # the Models page's column
    assert rows[served["versions"][0]]["dataset_successor"] == DS["b"]
    commit_version(lake, PIPELINE, DS["window"], {"dataset_version_id": DS["window"], "pipeline": PIPELINE,
                                                  "content_sha256": "c" * 64, "rows": {"published": 80}})
    purge(lake, PIPELINE, DS["b"], DS["window"], "er-fedcba9876543210")  # a later erasure replaces the successor
    later = version_page(mlf, lake, None, None, NAME, served["versions"][0])["lineage"]["dataset"]["manifest"]
    assert (later["purged"]["superseded_by"], later["purged"]["live"]) == (DS["b"], DS["window"])
    assert rows[served["versions"][1]]["dataset_successor"] is None  # its window is not in this lake: no claim
