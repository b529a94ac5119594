"""The run tab's lifecycle facts from the XCom return values of each crispflow DAG's tasks (shapes as the operators
and tasks return them), and the note of a run that skipped its work."""

from __future__ import annotations

from crispflow.ui.run_view import NOTE_LIMIT, ROUTES, href, run_summary, skip_note

MODEL = "crispflow-credit"
ENTRY = {"seq": 4, "action": "rollback", "from_version": "3", "to_version": "2",
         "moves": {"champion": ["3", "2"], "previous": ["2", None], "canary": [None, None]},
         "reason": "latency regression after the switch", "person": "ana", "state": "confirmed", "replayed": False}


def kinds(summary: dict) -> list[str]:
    return [i["kind"] for i in summary["items"]]


def by_kind(summary: dict, kind: str) -> list[dict]:
    return [i for i in summary["items"] if i["kind"] == kind]


def test_ingest_run_shows_batch_gate_counts_and_published_version_with_data_docs_links() -> None:
    summary = run_summary("ingest_validate", {
        "ingest": {"pipeline": "credit", "batch_id": "b-0123456789abcdef", "rows_in": 1200,
                   "interval": {"start": "2024-01-01T00:00:00+00:00", "end": "2024-02-01T00:00:00+00:00"}},
        "validate": {"batch_id": "b-0123456789abcdef", "success": True, "rows_in": 1200, "rows_passed": 1180,
                     "rows_quarantined": 20,
                     "files": {"quality_html": "batches/credit/b-0123456789abcdef/quality.html"}},
        "publish": {"pipeline": "credit", "dataset_version_id": "ds-00112233445566aa", "batch_id": "b-0123456789abcdef",
                    "rows": 1180, "spec_hash": "abc", "created": True, "event_emitted": True,
                    "manifest": "curated/credit/ds-00112233445566aa/manifest.json"},
    })
    assert kinds(summary) == ["batch", "quality", "dataset"]
    assert summary["pipeline"] == "credit" and summary["model"] == MODEL and summary["skipped"] is None
    gate = by_kind(summary, "quality")[0]
    assert "1,180 rows passed, 20 quarantined of 1,200" in gate["title"]
    assert gate["links"] == [{"label": "GX Data Docs", "href_path": "/data-docs/credit/b-0123456789abcdef"}]
    dataset = by_kind(summary, "dataset")[0]
    assert "ds-00112233445566aa" in dataset["title"] and "training run" in dataset["detail"]
    assert dataset["links"][0]["href_path"] == "/data-docs/credit/ds-00112233445566aa"


def test_a_republished_version_says_no_new_event_and_a_failed_gate_is_a_warning() -> None:
    republished = run_summary("ingest_validate", {
        "ingest": {"pipeline": "credit", "batch_id": "b-0123456789abcdef", "rows_in": 10, "interval": {}},
        "validate": {"batch_id": "b-0123456789abcdef", "success": True, "rows_in": 10, "rows_passed": 10,
                     "rows_quarantined": 0, "files": {}},
        "publish": {"pipeline": "credit", "dataset_version_id": "ds-00112233445566aa", "rows": 10,
                    "created": False, "event_emitted": False}})
    assert "already published" in by_kind(republished, "dataset")[0]["title"]
    assert "no new event" in by_kind(republished, "dataset")[0]["detail"]
    failed = run_summary("ingest_validate", {
        "ingest": {"pipeline": "credit", "batch_id": "b-0123456789abcdef", "rows_in": 10, "interval": {}},
        "validate": {"batch_id": "b-0123456789abcdef", "success": False, "rows_in": 10, "rows_passed": 0,
                     "rows_quarantined": 10, "files": {}}})
    gate = by_kind(failed, "quality")[0]
    assert gate["level"] == "warning" and gate["title"].startswith("Quality gate failed")


def training_results(blessed: bool) -> dict:
    return {
        "resolve": {"pipeline": "credit", "dataset_version_id": "ds-00112233445566aa", "search_budget": None,
                    "force_bless": False, "force_reason": ""},
        "prepare": {"parent_run_id": "a" * 32, "holdout_hash": "f" * 64, "n_train": 9000, "n_holdout": 1000},
        "plan": [{"config_id": "logreg-0"}, {"config_id": "hgb-1"}],
        "cross_validate[0]": {"config_id": "logreg-0", "candidate": "logreg", "metric": "average_precision",
                              "folds": [0.41, 0.43], "mean": 0.42, "mlflow_run_id": "b" * 32},
        "cross_validate[1]": {"config_id": "hgb-1", "candidate": "hgb", "metric": "average_precision",
                              "folds": [0.45, 0.47], "mean": 0.46, "mlflow_run_id": "c" * 32},
        "register": {"version": "3", "created": True, "config_id": "hgb-1", "threshold": 0.31,
                     "artifact_sha256": "d" * 64},
        "evaluate": {"version": "3", "metrics": {"roc_auc": 0.7312, "average_precision": 0.4567},
                     "latency_p95_ms": 1.9, "size_bytes": 52000},
        "bless": {"version": "3", "blessed": blessed, "mode": "versus_champion",
                  "reasons": [] if blessed else ["roc_auc: challenger - champion = -0.0300, lower bound ..."],
                  "promotion": {"action": "none", "reason": "champion v2 exists: canary decides", "version": "3"},
                  "model_card": {"markdown": "runs:/x/model_card/v3.md", "html": "runs:/x/model_card/v3.html"}},
        "needs_approval": False,
    }


def test_training_run_shows_version_metrics_verdict_and_the_canary_move() -> None:
    results = training_results(blessed=True)
    results["deploy"] = {"seq": 7, "action": "deploy_canary", "from_version": None, "to_version": "3",
                         "moves": {"canary": [None, "3"]}, "reason": "blessed by the gate in manual__1",
                         "person": "ana", "state": "confirmed", "replayed": False}
    summary = run_summary("train_evaluate_register", results)
    assert kinds(summary) == ["request", "holdout", "candidates", "model_version", "evaluation", "verdict",
                              "alias_move"]
    assert summary["model"] == MODEL and summary["skipped"] is None and summary["note"] is None
    assert "hgb-1: average_precision 0.46" in by_kind(summary, "candidates")[0]["detail"]
    registered = by_kind(summary, "model_version")[0]
    assert registered["title"] == f"Registered {MODEL} v3 as challenger"
    assert registered["links"][0]["href_path"] == f"/models/{MODEL}/versions/3"
    assert "roc_auc 0.7312" in by_kind(summary, "evaluation")[0]["detail"]
    verdict = by_kind(summary, "verdict")[0]
    assert verdict["title"] == "v3 blessed (versus champion)" and verdict["level"] == "success"
    assert {x["label"] for x in verdict["links"]} == {"Verdict", "Model card"}
    move = by_kind(summary, "alias_move")[0]
    assert move["title"] == "deploy canary: canary unset → v3"
    assert "for ana" in move["detail"] and "ledger entry 7" in move["detail"]
    assert move["links"] == [{"label": "Promotions", "href_path": f"/promotions/{MODEL}"}]


def test_an_unblessed_version_says_why_and_the_skipped_deploy_is_explained() -> None:
    results = training_results(blessed=False)
    results["deploy"] = {"skipped": f"{MODEL} v3 is not blessed: not deployed"}
    summary = run_summary("train_evaluate_register", results)
    verdict = by_kind(summary, "verdict")[0]
    assert verdict["title"].startswith("v3 not blessed") and verdict["level"] == "warning"
    assert "lower bound" in verdict["detail"] and "canary decides" in verdict["detail"]
    skipped = by_kind(summary, "skipped")
    assert [(s["title"], s["detail"]) for s in skipped] == [
        ("Not deployed", f"{MODEL} v3 is not blessed: not deployed")]
    assert summary["skipped"] is None  # the run did its work; only its deploy step had nothing to do


def test_a_training_run_whose_resolve_skipped_explains_itself_in_the_note() -> None:
    reason = ("no dataset large enough to train on (ds-00112233445566aa: 812 rows < training.min_rows=5000)")
    summary = run_summary("train_evaluate_register", {"resolve": {"skipped": reason}})
    assert summary["skipped"] == reason
    assert summary["note"] == f"Skipped, not failed: {reason}"
    assert [(i["kind"], i["title"], i["level"]) for i in summary["items"]] == [
        ("skipped", "Training skipped", "skipped")]


def test_a_forced_blessing_names_the_approver() -> None:
    results = training_results(blessed=False)
    results.update({
        "resolve": {**results["resolve"], "force_bless": True, "force_reason": "regulator asked for it"},
        "needs_approval": True,
        "approve_forced_blessing": {"chosen_options": ["Approve"], "params_input": {},
                                    "responded_at": "2026-12-02T10:00:00+00:00",
                                    "responded_by_user": {"id": "7", "name": "bea"}},
        "record_forced_blessing": {"action": "champion", "version": "3"},
    })
    summary = run_summary("train_evaluate_register", results)
    approval = by_kind(summary, "approval")[0]
    assert approval["title"] == "Forced blessing: Approve" and approval["detail"] == "by bea"
    forced = by_kind(summary, "verdict")[-1]
    assert forced["title"] == "v3 blessed by a person's approved override and became champion"
    assert "forced blessing requested" in by_kind(summary, "request")[0]["detail"]


def test_rollback_run_shows_the_alias_moves_of_its_ledger_entry() -> None:
    summary = run_summary("rollback", {"rollback": ENTRY}, conf={"pipeline": "credit", "reason": "x" * 10})
    move = by_kind(summary, "alias_move")[0]
    assert move["title"] == "rollback: champion v3 → v2, previous v2 → unset"  # canary unset → unset: no move
    assert "latency regression" in move["detail"] and "for ana" in move["detail"]
    assert move["links"][0]["href_path"] == f"/promotions/{MODEL}"
    named = run_summary("promote_canary", {"promote": {**ENTRY, "action": "promote", "model": "crispflow-churn"}})
    assert named["items"][0]["links"][0]["href_path"] == "/promotions/crispflow-churn"  # the entry names its model


def test_canary_analysis_per_pipeline_decisions_and_moves() -> None:
    promote = {"seq": 9, "action": "promote", "from_version": "2", "to_version": "3",
               "moves": {"champion": ["2", "3"], "previous": ["1", "2"], "canary": ["3", None]},
               "reason": "non-inferior", "person": "airflow:scheduled", "state": "confirmed", "replayed": False}
    summary = run_summary("canary_analysis", {
        "pipelines": ["credit", "churn"],
        "analyse_and_act[0]": {"decision": "promote", "reasons": ["non-inferior on 412 labelled pairs"],
                               "report": "file:///p/crispflow-credit/canary/v3/x.json", "champion": "2",
                               "canary": "3", "ledger": promote},
        "analyse_and_act[1]": {"decision": "none", "reasons": ["no canary deployed"]},
    })
    titles = [i["title"] for i in summary["items"]]
    assert titles == [f"{MODEL}: canary v3 vs champion v2: promote",
                      "promote: champion v2 → v3, previous v1 → v2, canary v3 → unset",
                      "crispflow-churn: no canary live"]
    assert summary["items"][2]["links"][0]["href_path"] == "/promotions/crispflow-churn"


def test_monitor_drift_links_each_window_report() -> None:
    summary = run_summary("monitor_drift", {
        "pipelines": ["credit"],
        "compute_drift[0]": {"model": MODEL, "window_start": "2026-12-02T09:00:00+00:00",
                             "window_end": "2026-12-02T10:00:00+00:00", "store": "file:///p", "summaries": [
                                 {"model": MODEL, "alias": "champion", "version": "2", "rows": 5400,
                                  "labelled_rows": 0, "status": "drift", "drift": True, "drift_share": 0.25,
                                  "drifted_features": ["int_rate", "dti"],
                                  "window_end": "2026-12-02T10:00:00+00:00", "report": "r",
                                  "mlflow_artifact": "runs:/x/drift/20261202T100000Z-champion.json"},
                                 {"model": MODEL, "alias": "canary", "version": "3", "rows": 0, "labelled_rows": 0,
                                  "status": "insufficient_data", "drift": False, "drift_share": 0.0,
                                  "drifted_features": [], "window_end": "2026-12-02T10:00:00+00:00"}]},
    })
    champion, canary = by_kind(summary, "drift")
    assert champion["title"] == f"{MODEL} champion v2: drift" and champion["level"] == "warning"
    assert "drifted: int_rate, dti" in champion["detail"] and "5,400 rows" in champion["detail"]
    assert champion["links"] == [
        {"label": "Drift", "href_path": f"/drift/{MODEL}"},
        {"label": "Report", "href_path": f"/drift/{MODEL}/reports/champion/20261202T100000Z/html"}]
    assert canary["title"] == f"{MODEL} canary v3: insufficient data"


def test_watch_drift_episode_and_alert_and_a_quiet_hour_is_a_skip() -> None:
    fired = run_summary("watch_drift", {
        "pipelines": ["credit"],
        "watch[0]": {"pipeline": "credit", "model": MODEL, "alias": "champion", "episode_id": "e-20261202T10",
                     "fired_at": "2026-12-02T10:05:00+00:00", "features": ["int_rate"], "max_drift_share": 0.4,
                     "statistics": {}, "windows": [], "prediction_drift": False, "versions": ["2"], "new_labels": 300},
        "alert[0]": {"sent": ["slack:alerts"], "skipped": [], "suppressed": False, "dedup_key": "crispflow-credit/e1"},
        "aliases_agree[0]": {"pipeline": "credit", "agree": True},
    })
    assert kinds(fired) == ["episode", "alert"]
    assert fired["items"][0]["title"] == f"{MODEL}: drift episode e-20261202T10, retrain requested"
    assert fired["items"][1]["title"] == "Alert sent to slack:alerts"
    assert fired["items"][1]["links"][0]["href_path"] == f"/drift/{MODEL}#alerts"
    quiet = run_summary("watch_drift", {
        "pipelines": ["credit"],
        "watch[0]": {"skipped": "no drift episode to act on before the deadline (last check: k_of_n)"},
        "aliases_agree[0]": {"pipeline": "credit", "agree": True}})
    assert quiet["skipped"].startswith("no drift episode") and quiet["note"].startswith("Skipped, not failed")
    assert quiet["items"][0]["title"] == "No drift episode to act on"


def test_retrain_batch_score_and_monthly_ingest_runs() -> None:
    retrain = run_summary("retrain_on_drift", {"resolve": {
        "conf": {"pipeline": "credit", "dataset_version_id": "ds-00112233445566aa"},
        "run_id": f"drift__{MODEL}__e1", "episode_id": "e1", "coalesced_events": 2}, "retrain": None})
    assert retrain["items"][0]["title"] == "Retrain requested for drift episode e1"
    assert "2 older event(s) coalesced" in retrain["items"][0]["detail"]
    scored = run_summary("batch_score", {
        "plan": [{"index": 0, "start": 0, "stop": 1000}],
        "score[0]": {"index": 0, "rows": 1000, "created": True, "file": "scores/.../part-00000.parquet"},
        "commit": {"pipeline": "credit", "dataset_version_id": "ds-00112233445566aa", "model": MODEL,
                   "model_version": "2", "rows": 1000, "output": "scores/credit/ds-00112233445566aa/v2",
                   "rows_in": 1000, "created": True, "event_emitted": True, "manifest": "m"}})
    assert scored["items"][0]["title"] == f"Scored 1,000 of 1,000 rows of ds-00112233445566aa with {MODEL} v2"
    monthly = run_summary("ingest_monthly", {
        "plan": [{"trigger_run_id": "scheduled__credit__2026-11-01", "conf": {"pipeline": "credit"}},
                 {"trigger_run_id": "scheduled__churn__2026-11-01", "conf": {"pipeline": "churn"}}],
        "ingest[0]": None, "ingest[1]": None})
    assert monthly["items"][0]["title"] == "Triggered 2 ingest_validate run(s)"
    assert monthly["items"][0]["detail"] == "credit, churn"


def test_an_unknown_dag_still_shows_ledger_moves_and_skips() -> None:
    summary = run_summary("promote_by_hand", {"move": ENTRY, "other": {"skipped": "nothing to do"}},
                          conf={"pipeline": "credit"})
    assert kinds(summary) == ["alias_move", "skipped"]


def test_an_acknowledgement_names_the_person() -> None:
    summary = run_summary("acknowledge_alert", {"acknowledge": {
        "model": MODEL, "key": "crispflow-credit/e1", "acknowledged_by": "ana", "acknowledged_at": "2026-12-02T11:00Z",
        "note": "looking into the int_rate feed"}}, conf={"pipeline": "credit", "key": "crispflow-credit/e1"})
    assert [(i["kind"], i["title"], i["detail"]) for i in summary["items"]] == [
        ("alert", "Alert crispflow-credit/e1 acknowledged by ana", "looking into the int_rate feed")]
    assert summary["items"][0]["links"] == [{"label": "Alerts", "href_path": f"/drift/{MODEL}#alerts"}]


def test_skip_note_fits_airflow_notes_and_links_quote_their_parts() -> None:
    assert len(skip_note("x" * 5000)) == NOTE_LIMIT
    assert skip_note("a\n  b") == "Skipped, not failed: a b"
    assert href("data_docs", pipeline="credit", ref="../../etc") == "/data-docs/credit/..%2F..%2Fetc"
    assert set(ROUTES) >= {"model", "version", "data_docs", "promotions", "drift", "drift_report"}
