"""Model cards: every section in both renderings, numbers with their CIs, escaping, n/a for undefined metrics."""

from __future__ import annotations

import hashlib
import html
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crispflow.lake import json_safe
from crispflow.model.blessing import decide
from crispflow.model.card import SECTIONS, UNDEFINED, ModelCardInput, render_html, render_markdown
from crispflow.model.evaluation import evaluate
from crispflow.model.holdout import holdout_hash, holdout_split
from crispflow.model.tasks import no_skill_output
from crispflow.spec import PipelineSpec, load_spec

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "include" / "data" / "lending_club.parquet"
LATENCY = {
    "batch_rows": 1971,
    "batch_ms": 21.5,
    "batch_ms_per_row": 0.0109,
    "single_rows": 200,
    "repeats": 3,
    "latency_p50_ms": 3.1,
    "latency_p95_ms": 4.2,
    "latency_max_ms": 9.7,
}
COST = {"latency_p95_ms": 4.2, "size_bytes": 48_213}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture(scope="module")
def spec() -> PipelineSpec:
    return load_spec("lending_club")


@pytest.fixture(scope="module")
def holdout(spec: PipelineSpec) -> pd.DataFrame:
    """The real time-split holdout of the demo data (the latest whole months, ~20 %)."""
    _, frame = holdout_split(spec, pd.read_parquet(DATA))
    return frame.reset_index(drop=True)


@pytest.fixture(scope="module")
def labels(holdout: pd.DataFrame) -> np.ndarray:
    return (holdout["Class"] == "bad").to_numpy()


@pytest.fixture(scope="module")
def slices(holdout: pd.DataFrame) -> dict[str, np.ndarray]:
    """The spec's slices plus the letter grade, whose rarest grades are too small to evaluate."""
    out = {c: holdout[c].astype(str).to_numpy() for c in ("term", "verification_status")}
    out["grade"] = holdout["sub_grade"].str[0].to_numpy()
    return out


def synthetic_score(y: np.ndarray, signal: float, seed: int) -> np.ndarray:
    """A calibrated-looking probability: the label's signal plus noise, centred near the base rate."""
    rng = np.random.default_rng(seed)
    return sigmoid(signal * y + rng.normal(size=y.size) - 3.0)


def manifest(spec: PipelineSpec) -> dict:
    data = DATA.read_bytes()
    return {
        "dataset_version_id": "ds-0123456789abcdef",
        "content_sha256": "ab" * 32,
        "pipeline": spec.name,
        "spec_hash": spec.spec_hash(),
        "batch_id": "b-fedcba9876543210",
        "interval": {"start": "2026-01-01T00:00:00+00:00", "end": "2027-01-01T00:00:00+00:00"},
        "rows": {"in": 9857, "published": 9851, "quarantined": 6},
        "sources": [
            {
                "source": "loans",
                "rows_read": 9857,
                "rows_in_interval": 9857,
                "fingerprint": {
                    "kind": "file",
                    "url": "include/data/lending_club.parquet",
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "bytes": len(data),
                },
            }
        ],
        "reconciliation": {"duplicate_key_rows": 0, "keys_in_several_sources": 0},
        "quality": {
            "success": True,
            "reasons": {"positive_income": 2, "il_24m_covers_12m": 4},
            "batch_failures": [],
            "expectations_evaluated": 31,
            "expectations_failed": 1,
        },
        "published_by": {"dag_id": "ingest_lending_club", "run_id": "manual__1", "at": "2024-05-01T10:00:00+00:00"},
    }


def build_card(
    spec: PipelineSpec,
    holdout: pd.DataFrame,
    y: np.ndarray,
    slices: dict,
    *,
    champion: bool,
    threshold: float = 0.12,
    stored: bool = True,
    n_boot: int | None = None,
) -> ModelCardInput:
    """A card as the DAG would assemble it; `stored` passes the records through json_safe (NaN -> None) as
    they come back from MLflow."""
    score = synthetic_score(y, 1.0, seed=1)
    policy = spec.blessing
    report = evaluate(
        y,
        score,
        threshold,
        slices=slices,
        n_boot=n_boot or policy.bootstrap_samples,
        alpha=policy.alpha,
        min_slice_rows=policy.min_slice_rows,
    )
    report.update(latency=LATENCY, size_bytes=48_213, holdout_hash=holdout_hash(spec, holdout))
    kwargs = {}
    if champion:  # a clearly stronger champion: the challenger fails non-inferiority
        kwargs = {"champion_score": synthetic_score(y, 3.0, seed=2), "champion_threshold": 0.2, "champion_cost": COST}
    verdict = decide(
        policy,
        y,
        score,
        threshold,
        slices={k: slices[k] for k in ("term", "verification_status")},
        challenger_cost=COST,
        **kwargs,
    )
    verdict.update(
        model="crispflow-lending_club",
        version="3",
        holdout_hash=report["holdout_hash"],
        champion_version="2" if champion else None,
        dataset_version_id="ds-0123456789abcdef",
        judged_by="train_evaluate_register/manual__7",
    )
    tags = {
        "crispflow.pipeline": spec.name,
        "crispflow.dataset_version_id": "ds-0123456789abcdef",
        "crispflow.spec_hash": spec.spec_hash(),
        "crispflow.git_commit": "0f" * 20,
        "crispflow.dag_id": "train_evaluate_register",
        "crispflow.run_id": "manual__7",
        "crispflow.holdout_hash": report["holdout_hash"],
        "crispflow.artifact_sha256": "cd" * 32,
    }
    return ModelCardInput(
        model_name="crispflow-lending_club",
        version="3",
        aliases=("challenger",),
        created=1_714_557_600_000,  # MLflow creation_timestamp (ms)
        spec=spec,
        dataset=manifest(spec),
        holdout={
            "holdout_hash": report["holdout_hash"],
            "rows": len(holdout),
            "cut_from": "ds-0123456789abcdef",
            "strategy": "time",
            "file": "holdouts/lending_club/x.parquet",
            "frozen_at": "2024-05-01T10:05:00+00:00",
        },
        config={
            "config_id": "logreg-2",
            "candidate": "logreg",
            "params": {"C": 0.1},
            "metric": "average_precision",
            "folds": [0.21, 0.19, 0.23, 0.2, 0.22],
            "mean": 0.21,
            "std": 0.0141,
        },
        threshold=threshold,
        threshold_objective_value=0.2311,
        evaluation=json_safe(report) if stored else report,
        verdict=json_safe(verdict) if stored else verdict,
        lineage=tags,
    )


@pytest.fixture(scope="module")
def card(spec: PipelineSpec, holdout: pd.DataFrame, labels: np.ndarray, slices: dict) -> ModelCardInput:
    return build_card(spec, holdout, labels, slices, champion=True)


@pytest.fixture(scope="module")
def rendered(card: ModelCardInput) -> tuple[str, str]:
    return render_markdown(card), render_html(card)


def unescape_md(md: str) -> str:
    return re.sub(r"\\(.)", r"\1", md)


def section(md: str, title: str) -> str:
    """The text of one `## title` section of a Markdown card."""
    return md.split(f"\n## {title}\n")[1].split("\n## ")[0]


def md_cells(line: str) -> int:
    return len(re.split(r"(?<!\\)\|", line.strip())) - 2


def check_md_tables(md: str) -> None:
    """Every row of every Markdown table has as many cells as its header (pipes in the content are escaped)."""
    width = None
    for line in md.splitlines():
        if line.startswith("|"):
            width = md_cells(line) if width is None else width
            assert md_cells(line) == width, line
        else:
            width = None


def test_every_section_is_in_both_renderings(rendered: tuple[str, str]) -> None:
    md, page = rendered
    for title in SECTIONS:
        assert f"\n## {title}\n" in md
        assert f"<h2>{html.escape(title)}</h2>" in page
    assert md.index("## Summary") < md.index("## Lineage")
    for sub in (
        "Out-of-scope use",
        "Sources",
        "Quarantine",
        "Frozen holdout",
        "Hyperparameters",
        "Features",
        "Confusion matrix",
        "Slices",
        "Latency and size",
        "Reasons",
        "Checks",
    ):
        assert f"### {sub}" in md and f"<h3>{sub}</h3>" in page
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"<script|<link|\bsrc=", page)  # self-contained, nothing loaded
    check_md_tables(md)


def test_holdout_metrics_appear_with_their_confidence_intervals(
    card: ModelCardInput, rendered: tuple[str, str]
) -> None:
    md, page = rendered
    labels = {
        "roc_auc": "ROC AUC",
        "average_precision": "Average precision",
        "f1": "F1",
        "precision": "Precision",
        "recall": "Recall",
        "brier": "Brier score (lower is better)",
    }
    assert "| Metric | Value | 95 % CI |" in md and "<th>95 % CI</th>" in page
    for name, m in card.evaluation["metrics"].items():
        value, ci = f"{m['value']:.4f}", f"[{m['ci_low']:.4f}, {m['ci_high']:.4f}]"
        assert f"| {labels[name]} | {value} | {ci} |" in md
        assert f"<td>{labels[name]}</td><td>{value}</td><td>{ci}</td>" in page
    cm = card.evaluation["confusion_matrix"]
    for key in ("tn", "fp", "fn", "tp"):
        assert f"{cm[key]:,} ({key.upper()})" in md and f"{cm[key]:,} ({key.upper()})" in page
    # slices carry value and CI per metric; the summary names the primary metric with its CI
    term = card.evaluation["slices"]["term"]["term_36"]["metrics"]["roc_auc"]
    cell = f"{term['value']:.4f} [{term['ci_low']:.4f}, {term['ci_high']:.4f}]"
    assert cell in md and cell in page
    overall = card.evaluation["metrics"]["roc_auc"]
    summary = section(md, "Summary")
    assert f"ROC AUC {overall['value']:.4f}, 95 % CI [{overall['ci_low']:.4f}, {overall['ci_high']:.4f}]" in summary
    # latency, size, holdout and lineage facts
    for text in (
        "0.0109 ms/row",
        "3.1 ms",
        "4.2 ms",
        "47.1 KiB (48,213 bytes)",
        card.holdout["holdout_hash"],
        card.lineage["crispflow.git_commit"],
        card.lineage["crispflow.artifact_sha256"],
        card.dataset["sources"][0]["fingerprint"]["sha256"],
        "ds-0123456789abcdef",
        "2024-05-01T10:00:00Z",
    ):
        assert text in md and text in page, text
    assert "| `il_24m_covers_12m` | 4 |" in md  # top quarantine reasons, most frequent first
    assert md.index("`il_24m_covers_12m`") < md.index("`positive_income`")
    assert "0.2100 ± 0.0141 over 5 folds" in md  # CV mean/std of the selection metric
    assert "minimises the out-of-fold cost 1 x false positives + 5 x false negatives" in md


def test_a_not_blessed_verdict_shows_its_reasons_and_every_check(
    card: ModelCardInput, rendered: tuple[str, str]
) -> None:
    md, page = rendered
    verdict = card.verdict
    assert not verdict["blessed"] and verdict["reasons"]
    plain = unescape_md(md)
    for reason in verdict["reasons"]:
        assert reason in plain and html.escape(reason) in page
    assert "**Not blessed** (versus_champion): " + verdict["reasons"][0] in section(plain, "Summary")
    assert "NOT BLESSED" in md and '<strong class="bad">NOT BLESSED</strong>' in page
    for check in verdict["checks"]:
        assert f"`{check['name']}`" in md and f"<code>{html.escape(check['name'])}</code>" in page
    main = next(c for c in verdict["checks"] if c["name"] == "non_inferiority")
    for key in ("estimate", "ci_low", "challenger", "champion"):
        assert f"{key} = {main[key]:.4g}" in plain
    assert "version 2" in md  # the champion compared against
    assert "Slice comparisons (roc_auc, holm)" in plain


def test_a_blessed_cold_start_says_so(
    spec: PipelineSpec, holdout: pd.DataFrame, labels: np.ndarray, slices: dict
) -> None:
    card = build_card(spec, holdout, labels, slices, champion=False, n_boot=200)
    assert card.verdict["blessed"], card.verdict["reasons"]
    md, page = render_markdown(card), render_html(card)
    assert "**Blessed** (cold_start): all 2 checks passed." in section(md, "Summary")
    assert '<strong class="good">BLESSED</strong>' in page
    assert "none (cold start)" in md
    assert "Cold start: judged only against the absolute floors" in unescape_md(md)


def test_undefined_metrics_render_as_n_a(
    spec: PipelineSpec, holdout: pd.DataFrame, labels: np.ndarray, slices: dict
) -> None:
    """A threshold above every score predicts no positive: precision is undefined (NaN in memory, None once
    stored); both forms render as n/a, its floor fails and it is listed among the limitations."""
    floors = {**spec.blessing.min_metrics, "precision": 0.1}
    spec = spec.model_copy(update={"blessing": spec.blessing.model_copy(update={"min_metrics": floors})})
    in_memory = build_card(spec, holdout, labels, slices, champion=False, threshold=1.5, stored=False, n_boot=200)
    stored = replace(in_memory, evaluation=json_safe(in_memory.evaluation), verdict=json_safe(in_memory.verdict))
    assert math.isnan(in_memory.evaluation["metrics"]["precision"]["value"])
    assert stored.evaluation["metrics"]["precision"]["value"] is None
    assert in_memory.verdict["reasons"] == ["precision is NaN/missing"]
    for card in (in_memory, stored):
        md, page = render_markdown(card), render_html(card)
        assert f"| Precision | {UNDEFINED} | {UNDEFINED} |" in md
        assert f"<td>Precision</td><td>{UNDEFINED}</td><td>{UNDEFINED}</td>" in page
        assert f"value = {UNDEFINED}" in md  # the failed floor's evidence
        for text in (md, page):
            # only the blessing's own wording "is NaN/missing"; no number is printed as nan/None/inf
            assert not re.search(r"(?i:\bnan\b(?!/missing)|\binf\b)|\bNone\b", text)
        limitations = section(unescape_md(md), "Limitations and caveats")
        assert "Undefined metrics" in limitations and "precision on the holdout" in limitations


def test_spec_text_is_escaped(card: ModelCardInput) -> None:
    evil = "<script>alert('x')</script> Loans | *really* [link](javascript:alert(1))"
    columns = [
        c.model_copy(update={"description": "a | b <b>bold</b>"}) if c.name == "int_rate" else c
        for c in card.spec.columns
    ]
    spec = card.spec.model_copy(
        update={"description": evil, "intended_use": "Demo <img src=x onerror=alert(1)>.", "columns": columns}
    )
    bad = ModelCardInput(**{**card.__dict__, "spec": spec})
    page, md = render_html(bad), render_markdown(bad)
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<img" not in page and "<b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert not re.search(r"(?<!\\)<", md)  # no raw HTML at all
    assert "\\<script>" in md and "[link\\](javascript" in md and "\\*really\\*" in md
    assert "a \\| b" in md
    check_md_tables(md)
    # the spec no longer matches the hash the model was trained under: the card says so
    assert "**Spec changed: **" in md


def test_pii_features_are_marked(card: ModelCardInput, rendered: tuple[str, str]) -> None:
    md, page = rendered
    assert "| `addr_state` | category | no | **PII: hmac** |" in md
    assert "<td><code>addr_state</code></td><td>category</td><td>no</td><td><strong>PII: hmac</strong></td>" in page
    assert "| `int_rate` | float | no | no |" in md
    features = md.split("### Features")[1].split("\n\n")[1]
    assert "`loan_id`" not in features and "`Class`" not in features  # key and target are not features
    assert features.count("**PII") == len([c for c in card.spec.pii_columns if c in card.spec.feature_columns]) == 1
    assert ("Personal-data features are used by the model: addr_state (stored and scored as keyed pseudonyms)"
            in unescape_md(md))


def test_limitations_are_derived_from_the_records(card: ModelCardInput, rendered: tuple[str, str]) -> None:
    md, page = rendered
    limitations = section(unescape_md(md), "Limitations and caveats")
    assert "The time column `application_month` is simulated" in limitations
    skipped = [f"grade={v}" for v, r in card.evaluation["slices"]["grade"].items() if "skipped" in r]
    assert skipped, "the rarest grades should be below min_slice_rows"
    for name in skipped:
        assert name in limitations
        assert "skipped: fewer than 50 rows" in md
    n, positives = card.evaluation["n"], card.evaluation["positives"]
    assert f"Class imbalance: the base rate of Class = 'bad' on the holdout is {positives / n:.1%}" in limitations
    assert "needs `crispflow` installed" in limitations and "FrameTyper" in limitations
    assert card.spec.description in limitations
    assert "Not for real lending decisions" in section(md, "Intended use").split("### Out-of-scope use")[1]
    assert "simulated" in html.unescape(page)


# ------------------------------------------------------------------------------------ regression, multiclass


def task_spec(spec: PipelineSpec, drop: tuple[str, ...] = (), **changes: object) -> PipelineSpec:
    """The demo spec turned into another task (same columns and data), validated as a user's spec would be."""
    raw = spec.model_dump(mode="json", exclude_none=True)
    drop = ("threshold", "selection_metric", *drop)
    training = {k: v for k, v in raw["training"].items() if k not in drop}
    training["candidates"] = [c for c in training["candidates"] if c["name"] == "hgb"]  # serves every task
    raw.update(training=training, **changes)
    return PipelineSpec.model_validate(raw)


def task_card(spec: PipelineSpec, holdout: pd.DataFrame, y: np.ndarray, output: np.ndarray, verdict: dict,
              evaluation: dict) -> ModelCardInput:
    evaluation.update(latency=LATENCY, size_bytes=48_213, holdout_hash=holdout_hash(spec, holdout))
    verdict.update(version="3", champion_version=None if verdict["mode"] == "cold_start" else "2")
    return ModelCardInput(
        model_name=f"crispflow-{spec.name}", version="3", spec=spec, dataset=manifest(spec),
        holdout={"holdout_hash": evaluation["holdout_hash"], "rows": len(holdout), "cut_from": "ds-0123456789abcdef",
                 "strategy": spec.split.strategy, "frozen_at": "2024-05-01T10:05:00+00:00"},
        config={"config_id": "hgb-1", "candidate": "hgb", "params": {}, "metric": spec.training.selection_metric,
                "mean": 1.1, "std": 0.05},
        threshold=None, evaluation=json_safe(evaluation), verdict=json_safe(verdict))


def test_a_regression_card(spec: PipelineSpec, holdout: pd.DataFrame) -> None:
    reg = task_spec(spec, ("class_weight", "calibration"), name="interest_rate", description="",
                    target={"column": "int_rate", "task": "regression"}, split={"strategy": "random"},
                    blessing={"primary_metric": "rmse", "non_inferiority_margin": 0.1, "bootstrap_samples": 200})
    y = holdout["int_rate"].to_numpy(float)
    rng = np.random.default_rng(5)
    prediction = y + rng.normal(scale=1.5, size=y.size)
    champion = y + rng.normal(scale=1.0, size=y.size)  # better: the challenger fails non-inferiority
    slices = {"term": holdout["term"].astype(str).to_numpy()}
    evaluation = evaluate(y, prediction, task="regression", slices=slices, n_boot=200)
    evaluation["interval"] = {"coverage": 0.9, "halfwidth": 2.47, "method": "split_conformal_oof",
                              "holdout_coverage": 0.897}
    verdict = decide(reg.blessing, y, prediction, None, task="regression", champion_score=champion, slices=slices,
                     challenger_cost=COST, champion_cost=COST)
    card = task_card(reg, holdout, y, prediction, verdict, evaluation)
    md, page = render_markdown(card), render_html(card)
    plain = unescape_md(md)
    for title in SECTIONS:
        assert f"\n## {title}\n" in md and f"<h2>{html.escape(title)}</h2>" in page
    check_md_tables(md)
    summary = section(plain, "Summary")
    assert "is a regressor `hgb` for the pipeline `interest_rate`. It predicts `int_rate` (regression)." in summary
    assert "It predicts `int_rate` (regression). Each prediction is served with a 90 % prediction interval of " \
        "± 2.4700" in summary
    rmse = evaluation["metrics"]["rmse"]
    ci = f"[{rmse['ci_low']:.4f}, {rmse['ci_high']:.4f}]"
    assert f"RMSE (lower is better) {rmse['value']:.4f}, 95 % CI {ci}" in summary
    for name, label in (("rmse", "RMSE (lower is better)"), ("mae", "MAE (lower is better)"), ("r2", "R²")):
        m = evaluation["metrics"][name]
        assert f"| {label} | {m['value']:.4f} | [{m['ci_low']:.4f}, {m['ci_high']:.4f}] |" in md
    assert "| Mean (bias; positive = under-prediction) | " in md and "### Residuals" in md
    assert "prediction ± 2.4700 (90 % target coverage, split_conformal_oof)" in plain
    assert "| Holdout rows inside their interval | 89.7 % |" in plain
    assert "Target: `int_rate` (regression)" in plain and "a random 20% of the rows (seed 42)" in plain
    assert "| Value | Rows | Mean residual | RMSE (lower is better) |" in md
    for absent in ("Decision threshold", "positive class", "positive)", "Class weight", "Confusion matrix",
                   "Base rate"):
        assert absent not in plain, absent
    assert "Slice comparisons (rmse, holm)" in plain and "| Slice | Rows | Estimate |" in md
    assert not card.verdict["blessed"] and card.verdict["reasons"][0] in plain
    assert "Errors are in the target's units" in section(plain, "Limitations and caveats")
    assert not re.search(r"(?i:\bnan\b(?!/missing)|\binf\b)|\bNone\b", md)


def test_a_multiclass_cold_start_card(spec: PipelineSpec, holdout: pd.DataFrame) -> None:
    mc = task_spec(spec, name="verification", target={"column": "verification_status", "task": "multiclass"},
                   blessing={"primary_metric": "log_loss", "bootstrap_samples": 200})
    classes = [str(c) for c in mc.class_labels]
    y = np.array([classes.index(v) for v in holdout["verification_status"].astype(str)])
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(y.size, len(classes)))
    logits[np.arange(y.size), y] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    baseline = no_skill_output("multiclass", y, y.size, len(classes))
    evaluation = evaluate(y, proba, task="multiclass", class_labels=classes,
                          slices={"term": holdout["term"].astype(str).to_numpy()}, n_boot=200)
    verdict = decide(mc.blessing, y, proba, None, task="multiclass", baseline_output=baseline)
    card = task_card(mc, holdout, y, proba, verdict, evaluation)
    md, page = render_markdown(card), render_html(card)
    plain = unescape_md(md)
    check_md_tables(md)
    assert card.verdict["blessed"], card.verdict["reasons"]
    summary = section(plain, "Summary")
    assert "among 3 classes (Not_Verified, Verified, Source_Verified), with a probability for each" in summary
    assert "**Blessed** (cold_start): all 1 checks passed." in summary
    assert "Target: `verification_status` (multiclass; classes `Not_Verified`, `Verified`, `Source_Verified`" in plain
    for label in classes:
        entry = evaluation["per_class"][label]
        p = entry["precision"]
        cell = f"| `{label}` | {entry['support']:,} | "
        assert cell in md and f"{p['value']:.4f} | [{p['ci_low']:.4f}, {p['ci_high']:.4f}]" in md
    matrix = evaluation["confusion_matrix"]["matrix"]
    assert f"| `Not_Verified` | {' | '.join(f'{v:,}' for v in matrix[0])} |" in md
    assert "| Actual → predicted | Not_Verified | Verified | Source_Verified |" in unescape_md(md)
    assert "| Value | Rows | Log loss (lower is better) | Macro F1 | Accuracy | Status |" in md
    assert "`no_skill_floor`" in md and "log loss - no-skill log loss < 0" in plain
    limitations = section(plain, "Limitations and caveats")
    assert "Cold start with no floors in `blessing.min_metrics`: judged only against no skill" in limitations
    assert "Class shares on the holdout" in limitations or "Class imbalance on the holdout" in limitations
    for absent in ("Decision threshold", "positive class", "positive)", "Base rate"):
        assert absent not in plain, absent
    assert "<td>Macro F1</td>" in page


def test_fairness_explanations_and_regulatory_sections(spec: PipelineSpec, holdout: pd.DataFrame, labels: np.ndarray,
                                                       slices: dict) -> None:
    """The gate's fairness report (per-group table with CIs, disparities, suppressed groups, the comparison) and the
    global explanation (importance with intervals, PDP thumbnails: linked in Markdown, embedded in HTML)."""
    from dataclasses import replace

    y = labels
    sensitive = {"emp_length": holdout["emp_length"].astype(str).to_numpy()}
    verdict = decide(spec.blessing, y, synthetic_score(y, 2.0, seed=1), 0.2, champion_score=synthetic_score(
        y, 2.0, seed=2), champion_threshold=0.2, challenger_cost=COST, champion_cost=COST, sensitive=sensitive)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    explanations = {
        "explainer": {"method": "linear_exact", "space": "log_odds_uncalibrated", "status": "ready: linear_exact"},
        "importance": {"metrics": ["roc_auc", "log_loss"], "primary_metric": "roc_auc", "alpha": 0.05, "rows": 10,
                       "repeats": 10, "features": [
                           {"feature": "int_rate", "roc_auc": {"importance": 0.1, "low": 0.08, "high": 0.12},
                            "log_loss": {"importance": 0.01, "low": 0.005, "high": 0.02}},
                           {"feature": "term", "roc_auc": {"importance": 0.0, "low": -0.01, "high": 0.01},
                            "log_loss": {"importance": -0.001, "low": -0.002, "high": 0.001}},
                           {"feature": "emp_length", "roc_auc": {"importance": -0.02, "low": -0.03, "high": None}}],
                       "notes": ["Correlated features share importance: <script>x</script>"]},
        "mean_abs_contribution": [{"feature": "int_rate", "mean_abs": 0.5, "low": 0.45, "high": 0.55}],
        "partial_dependence": {"int_rate": "explanations/v3/pdp_int_rate.png"},
    }
    card = replace(build_card(spec, holdout, labels, slices, champion=True), verdict=verdict,
                   explanations=explanations, images={"int_rate": png})
    md, page = render_markdown(card), render_html(card)
    check_md_tables(md)
    fairness = unescape_md(section(md, "Fairness"))
    assert f"**{verdict['fairness']['decision'].upper()}** (mode 'warn'" in section(md, "Fairness")
    groups = verdict["fairness"]["challenger"]["columns"]["emp_length"]["groups"]
    assert all(f"`{g['value']}` | {g['n']:,} |" in fairness for g in groups)
    assert "Equalized-odds difference" in fairness and "Against the champion" in fairness
    for g in verdict["fairness"]["challenger"]["columns"]["emp_length"]["suppressed"]:
        assert f"{g['value']} ({g['n']:,} rows" in fairness
    explained = unescape_md(section(md, "Explanations"))
    assert "| `int_rate` | +0.1000 | [+0.0800, +0.1200] | +0.0100 | [+0.0050, +0.0200] |" in explained
    assert "| `term` | +0.0000 | [-0.0100, +0.0100] (covers 0) |" in explained
    open_row = next(line for line in explained.splitlines() if line.startswith("| `emp_length` |"))
    assert open_row.startswith("| `emp_length` | -0.0200 | [-0.0300, —] |") and "covers 0" not in open_row
    assert "ROC AUC drop" in explained and "Log loss rise" in explained
    assert "![partial dependence of int_rate](../explanations/v3/pdp_int_rate.png)" in explained
    assert 'src="data:image/png;base64,iVBORw0KGgo' in page and "<script>x" not in page
    regulatory = unescape_md(section(md, "Regulatory mapping"))
    assert "LGPD art. 20" in regulatory and "GDPR" in regulatory and "ready: linear_exact" in regulatory
