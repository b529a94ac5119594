"""Drift episodes: k of n, hysteresis, one retrain per episode, cooldown, budget, labels, unusable windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crispflow.errors import ParamsError
from crispflow.monitoring import store
from crispflow.monitoring.episodes import (
    Decision,
    DriftPolicy,
    check,
    check_event,
    episode_record,
    evaluate,
    retrain_run_id,
    watch_request,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
MODEL = "crispflow-demo"


def window(i: int, share: float | None, status: str | None = None, labelled: int = 0, alias: str = "champion",
           features: list[str] | None = None) -> dict:
    """Window i covers [T0 + i h, T0 + (i+1) h)."""
    if status is None:
        status = "drift" if share is not None and share >= 0.1 else "no_drift"
    drifted = features if features is not None else (["int_rate"] if status == "drift" else [])
    return {"model": MODEL, "alias": alias, "version": "1", "window_start": (T0 + timedelta(hours=i)).isoformat(),
            "window_end": (T0 + timedelta(hours=i + 1)).isoformat(), "rows": 500, "labelled_rows": labelled,
            "status": status, "drift": status == "drift", "drift_share": share, "drifted_features": drifted,
            "statistics": {f: {"test": "ks", "statistic": 0.2, "p_adjusted": 1e-6, "psi": 0.3} for f in drifted},
            "prediction_drift": False, "report": f"reports/champion/{i}/report.json"}


def series(shares: list[float | None], **kw) -> list[dict]:
    return [window(i, s, **kw) for i, s in enumerate(shares)]


def at(i: int) -> datetime:
    return T0 + timedelta(hours=i + 1, minutes=5)


def fire(decision: Decision, pipeline: str = "demo") -> dict:
    assert decision.fire, decision
    return episode_record(decision, pipeline=pipeline, fired_at=decision_time(decision),
                          fired_by={"dag_id": "watch_drift", "run_id": "r", "task_id": "watch"})


def decision_time(decision: Decision) -> datetime:
    return datetime.fromisoformat(decision.reason["checked_at"])


POLICY = DriftPolicy()


def test_defaults_are_documented_values() -> None:
    p = DriftPolicy()
    assert (p.k, p.n, p.enter_share, p.exit_share, p.exit_windows) == (2, 3, 0.1, 0.05, 2)
    assert (p.cooldown_hours, p.budget, p.budget_period_hours, p.min_new_labels) == (6.0, 3, 168.0, 0)


def test_k_of_n_needs_two_hot_windows_among_the_last_three() -> None:
    ws = series([0.0, 0.3, 0.0])
    assert evaluate(ws, [], POLICY, at(2), model=MODEL).blocked_by == "no_episode"
    ws = series([0.0, 0.3, 0.0, 0.3])
    d = evaluate(ws, [], POLICY, at(3), model=MODEL)
    assert d.fire and d.episode_id == "champion-20260301T020000Z"  # the end of the first hot window
    assert d.reason["features"] == ["int_rate"] and d.reason["statistics"]["int_rate"]["psi"] == 0.3
    assert next(w["window_end"] for w in d.reason["windows"]) == (T0 + timedelta(hours=2)).isoformat()
    # hot windows too far apart never make an episode
    assert not evaluate(series([0.3, 0.0, 0.0, 0.3, 0.0, 0.0, 0.3]), [], POLICY, at(6)).fire


def test_enter_threshold_is_inclusive_exactly_at_the_threshold() -> None:
    p = DriftPolicy(enter_share=0.2)
    exactly = series([0.2, 0.2], status="no_drift")  # the share alone, exactly at enter
    assert evaluate(exactly, [], p, at(1)).fire
    below = series([0.19999, 0.19999], status="no_drift")
    assert evaluate(below, [], p, at(1)).blocked_by == "no_episode"
    # the calibrated verdict "drift" enters even with a small share (e.g. prediction drift)
    assert evaluate(series([0.0, 0.0], status="drift"), [], p, at(1)).fire


def test_hysteresis_exit_needs_consecutive_windows_strictly_below_exit() -> None:
    p = DriftPolicy(enter_share=0.2, exit_share=0.05, exit_windows=2)
    start = [0.3, 0.3]
    first = evaluate(series(start), [], p, at(1), model=MODEL)
    records = [fire(first)]
    eid = first.episode_id
    # between exit and enter: the episode goes on (no new one, no second retrain)
    for tail in ([0.1], [0.1, 0.1], [0.04, 0.1], [0.05, 0.05, 0.05]):  # 0.05 is exactly at exit: not below
        ws = series(start + tail, status="no_drift")
        d = evaluate(ws, records, p, at(len(ws) - 1) + timedelta(days=1), model=MODEL)
        assert d.episode_id == eid and d.blocked_by == "already_fired", tail
    # one cool window is not enough, two consecutive are: the episode is over
    ws = series([*start, 0.04], status="no_drift")
    assert evaluate(ws, records, p, at(2) + timedelta(days=1)).episode_id == eid
    ws = series([*start, 0.04, 0.049], status="no_drift")
    assert evaluate(ws, records, p, at(3) + timedelta(days=1)).blocked_by == "no_episode"
    # drift again after the exit: a new episode with a new id, and it fires
    ws = series([*start, 0.04, 0.0, 0.3, 0.3], status="no_drift")
    d = evaluate(ws, records, p, at(5) + timedelta(days=1), model=MODEL)
    assert d.fire and d.episode_id == "champion-20260301T050000Z" != eid


def test_one_retrain_per_episode_across_many_checks() -> None:
    shares = [0.0, 0.3, 0.3] + [0.4] * 40  # drift that persists for two days
    records: list[dict] = []
    fired = []
    for i in range(2, len(shares)):
        for minute in (5, 25, 45):  # checked three times an hour
            now = T0 + timedelta(hours=i + 1, minutes=minute)
            d = evaluate(series(shares[: i + 1]), records, POLICY, now, model=MODEL)
            if d.fire:
                fired.append(d.episode_id)
                records.append(episode_record(d, pipeline="demo", fired_at=now, fired_by={}))
    assert fired == ["champion-20260301T020000Z"]


def test_cooldown_after_a_retrain_blocks_a_new_episode() -> None:
    ws = series([0.3, 0.3])
    first = evaluate(ws, [], POLICY, at(1), model=MODEL)
    records = [fire(first)]
    ws = series([0.3, 0.3, 0.0, 0.0, 0.3, 0.3])  # exited, then a new episode
    soon = datetime.fromisoformat(records[0]["fired_at"]) + timedelta(hours=5, minutes=59)
    d = evaluate(ws, records, POLICY, soon, model=MODEL)
    assert not d.fire and d.blocked_by == "cooldown" and d.episode_id == "champion-20260301T050000Z"
    later = datetime.fromisoformat(records[0]["fired_at"]) + timedelta(hours=6)
    assert evaluate(ws, records, POLICY, later, model=MODEL).fire  # exactly at the end of the cooldown


def test_budget_per_period_holds() -> None:
    p = DriftPolicy(budget=2, budget_period_hours=24, cooldown_hours=0)
    records = [{"alias": "champion", "episode_id": f"champion-2026020{d}T000000Z",
                "fired_at": (T0 - timedelta(hours=h)).isoformat()} for d, h in ((1, 1), (2, 21))]
    ws = series([0.3, 0.3])
    d = evaluate(ws, records, p, at(1), model=MODEL)
    assert d.blocked_by == "budget" and not d.fire
    old = [records[0], {**records[1], "fired_at": (T0 - timedelta(hours=30)).isoformat()}]
    assert evaluate(ws, old, p, at(1), model=MODEL).fire


def test_minimum_new_labels_since_the_last_retrain() -> None:
    p = DriftPolicy(min_new_labels=100, cooldown_hours=0)
    ws = [window(0, 0.0, labelled=80), window(1, 0.3, labelled=10), window(2, 0.3, labelled=9)]
    assert evaluate(ws, [], p, at(2)).blocked_by == "labels"  # 99 < 100
    ws[2]["labelled_rows"] = 10
    assert evaluate(ws, [], p, at(2)).fire  # exactly 100
    # labels from before the last retrain do not count
    last = {"alias": "champion", "episode_id": "champion-20260201T000000Z",
            "fired_at": (T0 + timedelta(hours=1)).isoformat()}
    d = evaluate(ws, [last], p, at(2))
    assert d.blocked_by == "labels" and d.reason["new_labels"] == 20
    assert evaluate(ws, [last], p, at(2), new_labels=100).fire  # counted elsewhere: given explicitly


@pytest.mark.parametrize("bad", [
    {"status": "insufficient_data", "drift_share": 0.9},
    {"status": "drift", "drift_share": float("nan")},
    {"status": "drift", "drift_share": float("inf")},
    {"status": "drift", "drift_share": None},
    {"status": None, "drift_share": 0.5},
    {"status": "no_reference_data", "drift_share": 0.5},
])
def test_unusable_windows_are_ignored(bad: dict) -> None:
    ws = series([0.3, 0.0, 0.3])
    noisy = [ws[0], {**window(1, 0.0), **bad}, ws[2]]
    # the unusable window is skipped: not hot, and it does not push the first hot window out of "the last n"
    d = evaluate([*noisy, {**window(3, 0.0), **bad}], [], DriftPolicy(n=2), at(3))
    assert d.fire and d.reason["skipped_windows"] == 2 and d.reason["usable_windows"] == 2
    # unusable windows alone never start an episode and never end one
    assert evaluate([{**window(i, 0.0), **bad} for i in range(5)], [], POLICY, at(4)).blocked_by == "no_episode"
    p = DriftPolicy(exit_windows=2)
    run = [*series([0.3, 0.3, 0.0]), {**window(3, 0.0), **bad}, window(4, 0.0)]
    assert evaluate(run, [], p, at(4)).blocked_by == "no_episode"  # cool, (skipped), cool: exited
    run = [*series([0.3, 0.3, 0.0]), {**window(3, 0.0), **bad}]
    assert evaluate(run, [], p, at(3)).episode_id == "champion-20260301T010000Z"


def test_other_aliases_and_empty_stores() -> None:
    assert evaluate([], [], POLICY, T0).blocked_by == "no_episode"
    canary = series([0.3, 0.3], alias="canary")
    assert evaluate(canary, [], POLICY, at(1)).blocked_by == "no_episode"
    assert evaluate(canary, [], DriftPolicy(alias="canary"), at(1)).episode_id == "canary-20260301T010000Z"


def test_an_episode_longer_than_the_lookback_is_still_the_same_episode() -> None:
    p = DriftPolicy(lookback=4, cooldown_hours=0, budget=100)
    shares = [0.3] * 20
    first = evaluate(series(shares[:2]), [], p, at(1), model=MODEL)
    records = [fire(first)]
    for i in range(5, 20):  # the sensor reads only the newest 4 windows
        d = evaluate(series(shares[: i + 1])[-4:], records, p, at(i), model=MODEL)
        assert d.episode_id == first.episode_id and d.blocked_by == "already_fired", i


def test_policy_validation_names_the_field() -> None:
    with pytest.raises(ParamsError, match=r"policy\.k"):
        DriftPolicy(k=4, n=3)
    with pytest.raises(ParamsError, match="exit_share"):
        DriftPolicy(enter_share=0.1, exit_share=0.2)
    with pytest.raises(ParamsError, match="unknown field"):
        DriftPolicy.from_dict({"kk": 1})
    with pytest.raises(ParamsError, match=r"policy\.n"):
        DriftPolicy.from_dict({"n": "3"})
    with pytest.raises(ParamsError, match="enter_share"):
        DriftPolicy.from_dict({"enter_share": float("nan")})
    assert DriftPolicy.from_dict(DriftPolicy(k=3, n=4).to_dict()) == DriftPolicy(k=3, n=4)


def test_check_event_accepts_only_what_the_sensor_recorded() -> None:
    d = evaluate(series([0.3, 0.3]), [], POLICY, at(1), model=MODEL)
    record = fire(d)
    event = dict(record)
    store = {(MODEL, record["episode_id"]): record}

    def lookup(model: str, episode: str) -> dict | None:
        return store.get((model, episode))

    checked = check_event(event, lookup)
    assert checked["episode_id"] == record["episode_id"] and checked["features"] == ["int_rate"]
    assert retrain_run_id(MODEL, record["episode_id"]) == "drift__crispflow-demo__champion-20260301T010000Z"
    cases = {
        "payload must be an object": None,
        "pipeline": {**event, "pipeline": "../etc"},
        "model": {**event, "model": "crispflow-other"},
        "episode_id": {**event, "episode_id": "champion-../../x"},
        "alias": {**event, "alias": "canary"},
        "fired_at": {**event, "fired_at": "yesterday"},
        "features must be a list": {**event, "features": "int_rate"},
        "never recorded": {**event, "episode_id": "champion-20260301T090000Z"},
        "does not match the recorded": {**event, "features": ["int_rate", "annual_inc"]},
    }
    for message, payload in cases.items():
        with pytest.raises(ParamsError, match=message):
            check_event(payload, lookup)


def test_watch_request_names_the_model_and_tightens_the_spec_policy() -> None:
    assert watch_request("demo", None) == (MODEL, POLICY.to_dict())
    assert watch_request("demo", '{"k": 1, "n": 4}')[1] == DriftPolicy(k=1, n=4).to_dict()
    spec = DriftPolicy(k=3, n=4)
    assert watch_request("demo", {"k": 2}, spec)[1] == DriftPolicy(k=2, n=4).to_dict()
    assert watch_request("demo", " ") == watch_request("demo", {}) == (MODEL, POLICY.to_dict())
    cases = {"pipeline: '../x' is not a valid pipeline name": ("../x", None),
             "pipeline: None": (None, None),
             "policy: '{k' is not a JSON object": ("demo", "{k"),
             "policy: must be an object, got list": ("demo", [1]),
             r"policy: unknown field\(s\) \['q'\]": ("demo", {"q": 1}),
             "policy.k: 5 would loosen the spec's 2; a run may only lower it": ("demo", {"k": 5}),
             r"policy.k: 1 must be <= policy.n \(0\)|policy.n: 0 would loosen": ("demo", {"n": 0})}
    for message, (pipeline, policy) in cases.items():
        with pytest.raises(ParamsError, match=message):
            watch_request(pipeline, policy)


def test_check_reads_the_store_and_evaluates(tmp_path: Path) -> None:
    assert check(tmp_path, MODEL, POLICY, at(3)).blocked_by == "no_episode"  # an empty store
    for w in series([0.0, 0.3, 0.3]):
        store.write_window(tmp_path, w, {}, "")
    store.write_window(tmp_path, window(5, 0.9, alias="canary"), {}, "")  # another alias: not read
    d = check(tmp_path, MODEL, {"k": 2, "n": 3}, at(3))
    assert d == evaluate(series([0.0, 0.3, 0.3]), [], POLICY, at(3), model=MODEL)
    assert d.fire and d.episode_id == "champion-20260301T020000Z"
    record = fire(d)
    assert store.claim_episode(tmp_path, MODEL, record) == record
    assert check(tmp_path, MODEL, POLICY, at(3)).blocked_by == "already_fired"


def test_an_episode_is_claimed_once_and_read_back(tmp_path: Path) -> None:
    d = evaluate(series([0.3, 0.3]), [], POLICY, at(1), model=MODEL)
    first = episode_record(d, pipeline="demo", fired_at=at(1), fired_by={"run_id": "r1"})
    second = episode_record(d, pipeline="demo", fired_at=at(2), fired_by={"run_id": "r2"})
    assert store.read_episode(tmp_path, MODEL, d.episode_id) is None
    assert store.claim_episode(tmp_path, MODEL, first) == first
    assert store.claim_episode(tmp_path, MODEL, second) == first  # the earlier record wins, unchanged
    assert store.read_episode(tmp_path, MODEL, d.episode_id) == first
    assert store.episode_path(tmp_path, MODEL, d.episode_id) == \
        tmp_path / MODEL / "drift" / "episodes" / f"{d.episode_id}.json"
    assert store.read_episodes(tmp_path, MODEL) == [first]


def test_the_record_names_the_policy_it_fired_under() -> None:
    policy = DriftPolicy(k=1, cooldown_hours=12)
    d = evaluate(series([0.0, 0.3]), [], policy, at(2), model=MODEL)
    record = episode_record(d, pipeline="demo", fired_at=at(2), fired_by={})
    assert record["policy"] == policy.to_dict() and record["policy_sha256"] == policy.digest() != POLICY.digest()
