"""Server-side SVG charts for the UI pages: a time line chart and a heatmap, as text, with no JS and no library.

Every piece of text (titles, series and feature names, tooltips) is XML-escaped, with characters that XML 1.0
cannot carry replaced by U+FFFD, so data-derived names can never inject markup. Output is deterministic: the same
input gives the same bytes (coordinates and numbers are formatted with fixed precision, nothing depends on time
or randomness). Missing values (None, NaN, ±inf) are gaps in a line and grey cells in a heatmap.
"""

from __future__ import annotations

import html
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
FONT = 'font-family="sans-serif"'
MISSING = "#d9d9d9"
# PSI colour stops (value, rgb): pale below 0.1 (no shift), orange by 0.25 (moderate), dark red from 0.5 on.
STOPS = ((0.0, (255, 255, 229)), (0.1, (254, 217, 118)), (0.25, (236, 112, 20)), (0.5, (153, 52, 4)))
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def esc(text: object) -> str:
    """`text` safe inside an SVG/XML element or a double- or single-quoted attribute."""
    return html.escape(_NOT_XML.sub("\ufffd", str(text)), quote=True)


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _f(x: float) -> str:
    """A coordinate: one decimal, no negative zero."""
    text = f"{x:.1f}"
    return "0.0" if text == "-0.0" else text


def _num(value: float | None) -> str:
    return "missing" if value is None else f"{value:.4g}"


def _time(text: str) -> datetime:
    """An ISO time string as an aware UTC datetime (naive strings are taken as UTC); ValueError otherwise."""
    value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= value (value > 0)."""
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * power >= value * (1 - 1e-12):
            return step * power
    return 10.0 * power


def _open(width: int, height: int, title: str, kind: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="crispflow-{kind}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
            f"<title>{esc(title)}</title>",
            f'<text x="8" y="18" {FONT} font-size="14" font-weight="bold">{esc(title)}</text>']


def line_chart(series: Mapping[str, Sequence[tuple[str, float | None]]], *, title: str, y_max: float | None = None,
               threshold: float | None = None, width: int = 720, height: int = 220) -> str:
    """One polyline per series over a shared time axis (x = ISO time strings, points sorted by time), each point
    a marked circle with a <title> of its value; a None value breaks the line. `y_max` fixes the top of the y axis
    (else a round number above the data and the threshold); `threshold` draws a dashed horizontal line.
    ValueError for an x that is not an ISO time."""
    left, right, top, bottom = 52, 16, 44, 34
    pw, ph = max(width - left - right, 10), max(height - top - bottom, 10)
    parsed = {name: sorted(((_time(x), x, _finite(v)) for x, v in points), key=lambda p: p[0])
              for name, points in series.items()}
    times = [t for points in parsed.values() for t, _, _ in points]
    values = [v for points in parsed.values() for _, _, v in points if v is not None]
    limit = _finite(threshold)
    low = min([0.0, *values])
    high = _finite(y_max)
    if high is None:
        peak = max([*values, *([limit] if limit is not None else []), 0.0])
        high = _nice_ceiling(peak * 1.05) if peak > 0 else 1.0
    if high <= low:
        high = low + 1.0
    out = _open(width, height, title, "line-chart")
    out.append(f'<rect class="plot" x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#ccc"/>')
    for i, name in enumerate(parsed):  # legend, one row under the title
        lx = 8 + i * 130
        out.append(f'<g class="legend" data-series="{i}"><rect x="{lx}" y="26" width="10" height="10" '
                   f'fill="{PALETTE[i % len(PALETTE)]}"/><text x="{lx + 14}" y="35" {FONT} font-size="11">'
                   f"{esc(name)}</text></g>")

    def y_of(v: float) -> float:
        return top + ph - (min(max(v, low), high) - low) / (high - low) * ph

    for tick in (low, (low + high) / 2, high):
        y = y_of(tick)
        out.append(f'<line x1="{left}" y1="{_f(y)}" x2="{left + pw}" y2="{_f(y)}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{_f(y + 4)}" {FONT} font-size="10" text-anchor="end">{tick:.3g}</text>')
    if not times:
        out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph / 2:.1f}" {FONT} font-size="12" '
                   'text-anchor="middle" fill="#666">no data</text></svg>')
        return "".join(out)
    t0, t1 = min(times), max(times)
    span = (t1 - t0).total_seconds()

    def x_of(t: datetime) -> float:
        return left + (pw / 2 if span == 0 else (t - t0).total_seconds() / span * pw)

    for t, anchor in ((t0, "start"), (t1, "end")) if span else ((t0, "middle"),):
        out.append(f'<text x="{_f(x_of(t))}" y="{top + ph + 16}" {FONT} font-size="10" text-anchor="{anchor}">'
                   f"{t:%Y-%m-%d %H:%M} UTC</text>")
    if limit is not None:
        y = _f(y_of(limit))
        out.append(f'<line class="threshold" x1="{left}" y1="{y}" x2="{left + pw}" y2="{y}" stroke="#b00" '
                   f'stroke-dasharray="4 3"><title>threshold {limit:.4g}</title></line>')
    for i, (name, points) in enumerate(parsed.items()):
        colour = PALETTE[i % len(PALETTE)]
        out.append(f'<g class="series" data-series="{i}" fill="{colour}" stroke="{colour}">')
        segment: list[str] = []
        for t, _, v in points:
            if v is None:
                if len(segment) > 1:
                    out.append(f'<polyline fill="none" stroke-width="1.5" points="{" ".join(segment)}"/>')
                segment = []
                continue
            segment.append(f"{_f(x_of(t))},{_f(y_of(v))}")
        if len(segment) > 1:
            out.append(f'<polyline fill="none" stroke-width="1.5" points="{" ".join(segment)}"/>')
        for t, x, v in points:
            if v is not None:
                out.append(f'<circle class="point" cx="{_f(x_of(t))}" cy="{_f(y_of(v))}" r="2.5" stroke="none">'
                           f"<title>{esc(name)} {esc(x)}: {_num(v)}</title></circle>")
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def psi_colour(value: float | None) -> str:
    """The fill of a heatmap cell: grey when missing, else the PSI colour scale (clamped at its last stop)."""
    v = _finite(value)
    if v is None:
        return MISSING
    v = max(v, 0.0)
    for (a, ca), (b, cb) in itertools.pairwise(STOPS):
        if v <= b:
            w = (v - a) / (b - a)
            return "#" + "".join(f"{round(x + (y - x) * w):02x}" for x, y in zip(ca, cb, strict=True))
    return "#" + "".join(f"{x:02x}" for x in STOPS[-1][1])


def heatmap(rows: Sequence[str], columns: Sequence[str], values: Sequence[Sequence[float | None]],
            marked: Sequence[Sequence[bool]], *, title: str, cell: int = 14) -> str:
    """A rows x columns grid (features x windows), each cell a <rect class="cell" data-row data-col> coloured by
    its value (PSI) with a <title>; marked (drifted) cells get class "cell drifted" and a dot; missing values are
    grey cells (class "cell missing"). ValueError when `values` or `marked` is not rows x columns."""
    n, m = len(rows), len(columns)
    for name, grid in (("values", values), ("marked", marked)):
        if len(grid) != n or any(len(r) != m for r in grid):
            raise ValueError(f"heatmap: {name} must be {n} rows of {m} columns")
    cell = max(int(cell), 4)
    shown = [r if len(r) <= 28 else r[:27] + "\u2026" for r in map(str, rows)]
    label_w = min(max([len(s) for s in shown] + [6]) * 7 + 12, 220)
    top, foot = 48, 118
    width = label_w + max(m, 1) * cell + 24
    height = top + max(n, 1) * cell + foot
    out = _open(max(width, 460), height, title, "heatmap")
    # legend: the colour scale, missing, drifted
    for i, (v, label) in enumerate(((0.0, "0"), (0.1, "0.1"), (0.25, "0.25"), (0.5, "\u2265 0.5"))):
        out.append(f'<rect x="{8 + i * 54}" y="26" width="12" height="12" fill="{psi_colour(v)}" stroke="#999"/>'
                   f'<text x="{24 + i * 54}" y="36" {FONT} font-size="10">{esc(label)}</text>')
    out.append(f'<rect x="228" y="26" width="12" height="12" fill="{MISSING}" stroke="#999"/>'
               f'<text x="244" y="36" {FONT} font-size="10">missing</text>'
               f'<rect x="300" y="26" width="12" height="12" fill="{psi_colour(0.25)}" stroke="#999"/>'
               '<circle cx="306" cy="32" r="3" fill="#fff" stroke="#000"/>'
               f'<text x="316" y="36" {FONT} font-size="10">drifted (PSI colour scale)</text>')
    if not n or not m:
        out.append(f'<text x="{label_w}" y="{top + 14}" {FONT} font-size="12" fill="#666">no windows</text></svg>')
        return "".join(out)
    for i, (name, label) in enumerate(zip(rows, shown, strict=True)):
        y = top + i * cell
        out.append(f'<text class="row-label" x="{label_w - 6}" y="{y + cell - 3}" {FONT} font-size="11" '
                   f'text-anchor="end">{esc(label)}<title>{esc(name)}</title></text>')
    r = max(cell / 5, 1.5)
    for i, name in enumerate(rows):
        y = top + i * cell
        feature = esc(name)
        for j, column in enumerate(columns):
            x = label_w + j * cell
            v = _finite(values[i][j])
            drifted = bool(marked[i][j])
            kind = "cell drifted" if drifted else ("cell missing" if v is None else "cell")
            note = " (drifted)" if drifted else ""
            out.append(f'<rect class="{kind}" data-row="{i}" data-col="{j}" x="{x}" y="{y}" width="{cell - 1}" '
                       f'height="{cell - 1}" fill="{psi_colour(v)}"><title>{feature} \u00b7 {esc(column)}: PSI '
                       f"{_num(v)}{note}</title></rect>")
            if drifted:
                out.append(f'<circle class="mark" cx="{_f(x + (cell - 1) / 2)}" cy="{_f(y + (cell - 1) / 2)}" '
                           f'r="{_f(r)}" fill="#fff" stroke="#000" pointer-events="none"/>')
    step = max(1, math.ceil(24 / cell))
    base = top + n * cell + 6
    for j, column in enumerate(columns):
        if j != m - 1 and (j % step or m - 1 - j < step):  # every step-th column and the last, never crowded
            continue
        x = _f(label_w + j * cell + cell / 2 + 3)
        out.append(f'<text class="col-label" x="{x}" y="{base}" {FONT} font-size="10" text-anchor="end" '
                   f'transform="rotate(-90 {x} {base})">{esc(column)}</text>')
    out.append("</svg>")
    return "".join(out)
