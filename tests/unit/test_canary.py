"""Canary analysis: decisions from synthetic prediction logs, and the sequential test's validity under peeking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crispflow.release.canary import (
    CONTINUE,
    PROMOTE,
    ROLLBACK,
    CanaryPolicy,
    analyse,
    msprt_interval,
    paired_differences,
    psi,
)

RNG = np.random.default_rng(7)


def arm(alias: str, version: str, n: int, *, quality: float, errors: float = 0.0, latency: float = 5.0,
        labelled: float = 1.0, rng: np.random.Generator = RNG) -> pd.DataFrame:
    """n requests; `quality` in [0, 1]: how well scores separate the (Bernoulli 0.2) labels."""
    label = rng.random(n) < 0.2
    noise = rng.random(n)
    score = np.clip(quality * (0.15 + 0.7 * label) + (1 - quality) * noise, 0.01, 0.99)
    status = np.where(rng.random(n) < errors, "error", "ok")
    has_label = rng.random(n) < labelled
    return pd.DataFrame({
        "alias": alias, "version": version, "served": True, "status": status,
        "score": np.where(status == "ok", score, np.nan),
        "latency_ms": rng.gamma(4.0, latency / 4.0, n),
        "label": pd.array(np.where(has_label, label.astype(int), pd.NA), dtype="Int8"),
    })


def log(*arms: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(arms, ignore_index=True)


def test_a_better_canary_with_enough_labels_is_promoted() -> None:
    frame = log(arm("champion", "1", 800, quality=0.5), arm("canary", "2", 800, quality=0.6))
    report = analyse(frame, frame, champion="1", canary="2")
    assert report["decision"] == PROMOTE, report["reasons"]
    assert report["labelled"]["interval"]["upper"] < CanaryPolicy().margin
    assert report["since_deploy"]["canary"]["roc_auc"] > report["since_deploy"]["champion"]["roc_auc"]


def test_paired_evidence_promotes_with_few_labels() -> None:
    """Both models scoring the same labelled requests: a few hundred labels settle what unpaired arms cannot."""
    rng = np.random.default_rng(1)
    frame = log(arm("champion", "1", 400, quality=0.5, rng=rng), arm("canary", "2", 100, quality=0.5, rng=rng))
    labels = (rng.random(500) < 0.1).astype(float)
    champion_scores = np.clip(0.1 + 0.3 * labels + rng.normal(0, 0.05, 500), 0.01, 0.99)
    canary_scores = np.clip(champion_scores + rng.normal(0, 0.005, 500), 0.01, 0.99)
    unpaired = analyse(frame, frame, champion="1", canary="2", policy=CanaryPolicy(min_labels=90))
    paired = analyse(frame, frame, champion="1", canary="2", policy=CanaryPolicy(min_labels=90),
                     paired=paired_differences(canary_scores, champion_scores, labels))
    assert unpaired["decision"] == CONTINUE and unpaired["labelled"]["design"] == "unpaired"
    assert paired["decision"] == PROMOTE and paired["labelled"]["design"] == "paired"
    assert paired["labelled"]["interval"]["half_width"] < unpaired["labelled"]["interval"]["half_width"] / 5


def test_too_few_labels_means_continue() -> None:
    frame = log(arm("champion", "1", 400, quality=0.5, labelled=0.1), arm("canary", "2", 400, quality=0.5,
                                                                          labelled=0.1))
    report = analyse(frame, frame, champion="1", canary="2")
    assert report["decision"] == CONTINUE
    assert any("labelled requests" in r for r in report["reasons"])


def test_a_canary_that_errors_is_rolled_back() -> None:
    frame = log(arm("champion", "1", 600, quality=0.5), arm("canary", "2", 600, quality=0.5, errors=0.08))
    report = analyse(frame, frame, champion="1", canary="2")
    assert report["decision"] == ROLLBACK
    assert report["guardrails"]["error_rate"]["failed"]
    assert "error rate" in report["reasons"][0]


def test_a_slow_canary_is_rolled_back() -> None:
    frame = log(arm("champion", "1", 600, quality=0.5), arm("canary", "2", 600, quality=0.5, latency=40.0))
    report = analyse(frame, frame, champion="1", canary="2")
    assert report["decision"] == ROLLBACK
    assert report["guardrails"]["latency_p95_ms"]["failed"]


def test_a_worse_canary_is_rolled_back_on_labels() -> None:
    frame = log(arm("champion", "1", 1500, quality=0.7), arm("canary", "2", 1500, quality=0.1))
    report = analyse(frame, frame, champion="1", canary="2")
    assert report["decision"] == ROLLBACK
    assert report["labelled"]["interval"]["lower"] > 0


def test_shadow_rows_and_other_versions_are_not_counted() -> None:
    champion, canary = arm("champion", "1", 300, quality=0.5), arm("canary", "2", 300, quality=0.5)
    shadow = arm("shadow", "3", 300, quality=0.0).assign(served=False)
    stale = arm("canary", "9", 300, quality=0.0, errors=0.5)
    report = analyse(log(champion, canary, shadow, stale), log(champion, canary), champion="1", canary="2")
    assert report["window"]["canary"]["requests"] == 300
    assert report["window"]["champion"]["requests"] == 300
    assert not report["guardrails"]["error_rate"]["failed"]


def test_an_empty_window_waits() -> None:
    empty = arm("champion", "1", 0, quality=0.5)
    report = analyse(empty, empty, champion="1", canary="2")
    assert report["decision"] == CONTINUE
    assert report["window"]["canary"]["requests"] == 0


def test_the_sequential_interval_stays_valid_under_repeated_looks() -> None:
    """Under no difference, looking after every batch for 20 batches still rejects in about alpha of the runs
    (a fixed-sample interval checked 20 times would reject in roughly a quarter of them)."""
    rng = np.random.default_rng(11)
    alpha, runs, rejected = 0.05, 300, 0
    for _ in range(runs):
        a, b = rng.exponential(0.5, 2000), rng.exponential(0.5, 2000)
        for n in range(100, 2001, 100):
            ci = msprt_interval(a[:n], b[:n], alpha, 0.05)
            if ci["lower"] > 0 or ci["upper"] < 0:
                rejected += 1
                break
    assert rejected / runs <= alpha + 0.03


def test_the_interval_finds_a_real_difference() -> None:
    rng = np.random.default_rng(3)
    ci = msprt_interval(rng.exponential(0.6, 3000), rng.exponential(0.5, 3000), 0.05, 0.05)
    assert ci["lower"] > 0 and ci["lower"] < 0.1 < ci["upper"]


@pytest.mark.parametrize("shift,expected", [(0.0, "small"), (0.3, "large")])
def test_psi_separates_shifted_scores(shift: float, expected: str) -> None:
    rng = np.random.default_rng(5)
    value = psi(rng.beta(2, 5, 5000), np.clip(rng.beta(2, 5, 5000) + shift, 0, 1))
    assert (value < 0.05) if expected == "small" else (value > 0.25)
    assert psi(np.array([]), np.array([0.5])) is None
