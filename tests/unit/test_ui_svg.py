"""Server-side SVG of the UI pages (no Airflow): well-formed, deterministic, escaped, and drawing what it is given."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from crispflow.ui.svg import MISSING, heatmap, line_chart, psi_colour

NS = {"s": "http://www.w3.org/2000/svg"}
EVIL = '<script>alert("x")</script>&\x01'


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


def test_line_chart_draws_one_line_per_series_with_a_titled_point_per_value_and_gaps_for_missing() -> None:
    series = {"champion": [("2026-03-01T02:00:00+00:00", 0.05), ("2026-03-01T01:00:00+00:00", 0.0),
                           ("2026-03-01T03:00:00+00:00", None), ("2026-03-01T04:00:00+00:00", 0.4),
                           ("2026-03-01T05:00:00+00:00", 0.3)],
              "canary": [("2026-03-01T04:00:00+00:00", 0.2)]}
    svg = line_chart(series, title="Drift share", threshold=0.1)
    assert svg == line_chart(series, title="Drift share", threshold=0.1)  # deterministic
    root = parse(svg)
    champion, canary = root.findall("s:g[@class='series']", NS)
    # the None at 03:00 splits champion into two lines (01:00-02:00 sorted by time, 04:00-05:00)
    assert len(champion.findall("s:polyline", NS)) == 2 and not canary.findall("s:polyline", NS)
    titles = [c.find("s:title", NS).text for c in champion.findall("s:circle", NS)]
    assert titles == ["champion 2026-03-01T01:00:00+00:00: 0", "champion 2026-03-01T02:00:00+00:00: 0.05",
                      "champion 2026-03-01T04:00:00+00:00: 0.4", "champion 2026-03-01T05:00:00+00:00: 0.3"]
    assert len(canary.findall("s:circle", NS)) == 1
    threshold = root.find("s:line[@class='threshold']", NS)
    assert threshold is not None and threshold.find("s:title", NS).text == "threshold 0.1"
    # y axis: 0 at the bottom of the plot (top 44 + height 142), 0.4 below the round top 0.5
    ys = {c.find("s:title", NS).text.rsplit(": ", 1)[1]: float(c.get("cy")) for c in champion.findall("s:circle", NS)}
    assert ys["0"] == 186.0 and ys["0.4"] == pytest.approx(186.0 - 0.4 / 0.5 * 142, abs=0.1)


def test_line_chart_escapes_names_and_titles_and_handles_no_data() -> None:
    svg = line_chart({EVIL: [("2026-03-01T02:00:00Z", 0.1)]}, title=EVIL, y_max=1.0)
    assert "<script" not in svg and "\x01" not in svg
    root = parse(svg)
    assert root.find("s:title", NS).text == '<script>alert("x")</script>&\ufffd'
    assert root.find("s:g[@class='legend']/s:text", NS).text.startswith("<script>")
    empty = parse(line_chart({}, title="nothing"))
    assert [t.text for t in empty.iter("{http://www.w3.org/2000/svg}text")][-1] == "no data"
    with pytest.raises(ValueError):
        line_chart({"a": [("yesterday", 0.1)]}, title="bad x")


def test_heatmap_has_a_titled_cell_per_value_drifted_cells_marked_and_missing_cells_grey() -> None:
    rows = ["int_rate", EVIL]
    columns = ["20260301T010000Z", "20260301T020000Z", "20260301T030000Z"]
    values = [[0.0, 0.3, None], [0.05, float("nan"), 0.9]]
    marked = [[False, True, False], [False, False, True]]
    svg = heatmap(rows, columns, values, marked, title="PSI")
    assert svg == heatmap(rows, columns, values, marked, title="PSI")
    assert "<script" not in svg
    root = parse(svg)
    cells = root.findall("s:rect[@data-row]", NS)
    assert len(cells) == 6 and all("cell" in c.get("class").split() for c in cells)
    by_pos = {(int(c.get("data-row")), int(c.get("data-col"))): c for c in cells}
    assert {p for p, c in by_pos.items() if "drifted" in c.get("class")} == {(0, 1), (1, 2)}
    assert {p for p, c in by_pos.items() if "missing" in c.get("class")} == {(0, 2), (1, 1)}
    assert by_pos[0, 2].get("fill") == by_pos[1, 1].get("fill") == MISSING
    assert len(root.findall("s:circle[@class='mark']", NS)) == 2
    assert by_pos[1, 2].find("s:title", NS).text == '<script>alert("x")</script>&\ufffd · 20260301T030000Z: PSI 0.9 ' \
                                                    "(drifted)"
    assert by_pos[0, 2].find("s:title", NS).text.endswith("PSI missing")
    labels = [t.find("s:title", NS).text for t in root.findall("s:text[@class='row-label']", NS)]
    assert labels == ["int_rate", '<script>alert("x")</script>&\ufffd']


def test_psi_colour_scale_darkens_with_psi_and_heatmap_checks_its_shape() -> None:
    reds = [int(psi_colour(v)[1:3], 16) + int(psi_colour(v)[3:5], 16) + int(psi_colour(v)[5:7], 16)
            for v in (0.0, 0.05, 0.1, 0.2, 0.25, 0.4, 0.5, 3.0)]
    assert reds == sorted(reds, reverse=True) and reds[-1] == reds[-2]  # clamped from 0.5 on
    assert psi_colour(None) == psi_colour(float("inf")) == MISSING
    with pytest.raises(ValueError, match="values"):
        heatmap(["a"], ["w1", "w2"], [[0.1]], [[False, False]], title="t")
    with pytest.raises(ValueError, match="marked"):
        heatmap(["a"], ["w1"], [[0.1]], [[False], [True]], title="t")
    empty = parse(heatmap([], [], [], [], title="none"))
    assert not empty.findall("s:rect[@data-row]", NS)
    assert [t.text for t in empty.iter("{http://www.w3.org/2000/svg}text")][-1] == "no windows"
