"""Drift reports for people and machines: canonical JSON, a text table, and one HTML page with a plot per feature.

The HTML is self-contained (inline SVG bar charts of reference vs current share per bin, no scripts, no external
assets) and every value taken from the data is HTML-escaped. PII categories arrive already redacted from
`compute_drift`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crispflow.lake import write_atomic

REF_COLOUR, CUR_COLOUR = "#4c78a8", "#f58518"


def render_json(report: Mapping[str, Any]) -> str:
    """Indented JSON with sorted keys (no NaN: `compute_drift` reports are JSON-safe)."""
    return json.dumps(report, sort_keys=True, indent=2, allow_nan=False)


def _num(value: Any, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def _rows(report: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    rows = list(report.get("features", {}).items())
    rows += [(name, report[name]) for name in ("prediction", "predicted_class", "label") if report.get(name)]
    return rows


def render_table(report: Mapping[str, Any]) -> str:
    """A fixed-width table: feature, kind, test, statistic, p-value (BH-adjusted), threshold, PSI, drifted, status;
    then performance metrics (if any) and the verdict line."""
    header = ("feature", "kind", "test", "statistic", "p_adjusted", "threshold", "psi", "drifted", "status")
    lines = [header]
    for name, r in _rows(report):
        lines.append((name, r.get("kind", name), r.get("test", "fisher"), _num(r.get("statistic")),
                      _num(r.get("p_adjusted"), ".3g"), _num(r.get("threshold")), _num(r.get("psi"), ".3f"),
                      "YES" if r.get("drifted") else "no", r.get("status", "-")))
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    out = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in lines]
    perf = report.get("performance")
    if perf:
        out.append("")
        at = f" at threshold {perf['threshold']:.3g}" if perf.get("threshold") is not None else ""
        out.append(f"performance{at} ({perf['rows']} labelled rows):")
        for name, m in perf["metrics"].items():
            out.append(f"  {name}: reference {_num(m['reference'], '.3f')}, current {_num(m['current'], '.3f')} "
                       f"[{_num(m['ci_low'], '.3f')}, {_num(m['ci_high'], '.3f')}], p_adjusted "
                       f"{_num(m.get('p_adjusted'), '.3g')}, degraded: {'YES' if m.get('degraded') else 'no'}")
    out.append("")
    out.append(verdict_line(report))
    return "\n".join(out)


def verdict_line(report: Mapping[str, Any]) -> str:
    status = report["status"]
    head = {"drift": "DRIFT", "no_drift": "no drift", "insufficient_data": "insufficient data"}.get(status, status)
    reasons = "; ".join(report.get("reasons") or [])
    return (f"verdict: {head} ({report['rows']} rows vs {report['reference_rows']} reference rows, "
            f"drifted share {report.get('drift_share', 0.0):.3f})" + (f": {reasons}" if reasons else ""))


def _svg_bars(bins: Mapping[str, Any], width: int = 560, height: int = 170) -> str:
    labels, ref, cur = bins["labels"], bins["reference"], bins["current"]
    top = max([*ref, *cur, 1e-9])
    slot = (width - 40) / max(len(labels), 1)
    bar = max(slot * 0.4, 1.0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}" role="img">',
             f'<line x1="30" y1="{height}" x2="{width - 10}" y2="{height}" stroke="#888"/>',
             f'<text x="0" y="12" font-size="10">{top:.0%}</text>']
    for i, (label, r, c) in enumerate(zip(labels, ref, cur, strict=True)):
        x = 30 + i * slot
        hr, hc = (height - 20) * r / top, (height - 20) * c / top
        tip = html.escape(f"{label}: reference {r:.1%}, current {c:.1%}")
        parts.append(f'<g><title>{tip}</title>'
                     f'<rect x="{x:.1f}" y="{height - hr:.1f}" width="{bar:.1f}" height="{hr:.1f}" '
                     f'fill="{REF_COLOUR}"/>'
                     f'<rect x="{x + bar:.1f}" y="{height - hc:.1f}" width="{bar:.1f}" height="{hc:.1f}" '
                     f'fill="{CUR_COLOUR}"/></g>')
    parts.append(f'<text x="30" y="{height + 15}" font-size="10">{html.escape(str(labels[0]))}</text>')
    parts.append(f'<text x="{width - 10}" y="{height + 15}" font-size="10" text-anchor="end">'
                 f'{html.escape(str(labels[-1]))}</text></svg>')
    return "".join(parts)


def render_html(report: Mapping[str, Any], title: str = "Drift report") -> str:
    """One page: the verdict, the summary table, then one bar chart per feature (and the prediction)."""
    esc = html.escape
    colour = {"drift": "#c0392b", "no_drift": "#27ae60"}.get(report["status"], "#7f8c8d")
    sections = []
    for name, r in _rows(report):
        if not r.get("bins"):
            continue
        facts = (f"{r.get('test', '')} statistic {_num(r.get('statistic'))}, "
                 f"p_adjusted {_num(r.get('p_adjusted'), '.3g')}"
                 f", PSI {_num(r.get('psi'), '.3f')}, JS {_num(r.get('js_distance'), '.3f')}")
        if r.get("wasserstein_norm") is not None:
            facts += f", Wasserstein/std {_num(r['wasserstein_norm'], '.3f')}"
        extra = [f"unseen values: {r['unseen']['count']}"] if r.get("unseen", {}).get("count") else []
        extra += [r["note"]] if r.get("note") else []
        flag = '<b style="color:#c0392b">drifted</b>' if r.get("drifted") else "no drift"
        sections.append(f"<section><h3>{esc(name)} — {flag} <small>({esc(r.get('status', ''))})</small></h3>"
                        f"<p>{esc(facts)}{esc('; ' + '; '.join(extra)) if extra else ''}</p>{_svg_bars(r['bins'])}"
                        "</section>")
    legend = (f'<p><span style="color:{REF_COLOUR}">■ reference</span> '
              f'<span style="color:{CUR_COLOUR}">■ current</span> (share of rows per bin)</p>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}pre{background:#f6f6f6;padding:1em}"
            "section{margin-bottom:1.5em}</style></head><body>"
            f"<h1>{esc(title)}</h1><p style='color:{colour};font-size:1.2em'>{esc(verdict_line(report))}</p>"
            f"<pre>{esc(render_table(report))}</pre>{legend}{''.join(sections)}</body></html>")


def write_report(report: Mapping[str, Any], directory: str | Path, stem: str = "drift") -> dict[str, Path]:
    """Write `<stem>.json` and `<stem>.html` into `directory`, each atomically (`crispflow.lake.write_atomic`)."""
    texts = {"json": render_json(report), "html": render_html(report)}
    out = {ext: Path(directory) / f"{stem}.{ext}" for ext in texts}
    for ext, text in texts.items():
        write_atomic(out[ext], text.encode())
    return out
