"""Tests for backfill.plots (the charts of the app and of ``backfill reproduce``) and the explorer's
thumbnails."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from backfill import plots
from backfill.datasets import FASHION_MNIST_CLASSES
from backfill.explorer import ScorePanel


def test_curve_figure_has_lines_references_and_marker():
    points = np.linspace(0, 1, 5)
    series = {"new_partial": np.linspace(0, 0.6, 5), "full": np.linspace(0.4, 0.62, 5)}
    fig = plots.curve_figure(points, series, labels={"full": "Full"}, ratio=0.5,
                             references={"old/old": 0.4, "new/new": 0.6}).to_dict()
    names = [t["name"] for t in fig["data"]]
    assert names == ["new_partial", "Full", "current"]
    assert fig["data"][0]["x"] == pytest.approx([0, 25, 50, 75, 100])
    marker = fig["data"][2]
    assert marker["x"] == pytest.approx([50, 50]) and marker["y"] == pytest.approx([30, 51])
    shapes = fig["layout"]["shapes"]
    horizontal = sorted(s["y0"] for s in shapes if s["type"] == "line" and s["y0"] == s["y1"])
    assert horizontal == pytest.approx([40, 60])
    assert [s["x0"] for s in shapes if s["x0"] == s["x1"]] == pytest.approx([50])


def test_curve_figure_validates():
    with pytest.raises(ValueError, match="one value per point"):
        plots.curve_figure(np.linspace(0, 1, 3), {"a": np.zeros(4)})
    with pytest.raises(ValueError, match="ratio"):
        plots.curve_figure(np.linspace(0, 1, 3), {"a": np.zeros(3)}, ratio=2)


def test_png_and_html_exports():
    points = np.linspace(0, 1, 3)
    series = {"full": np.array([0.1, 0.2, 0.3])}
    png = plots.curves_png(points, series, references={"old/old": 0.1}, ratio=0.5)
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size[0] > 300
    html = plots.figure_html(plots.curve_figure(points, {"full": np.array([0.1, 0.2, 0.3])}))
    assert html.lstrip().lower().startswith("<!doctype html>") and "plotly" in html.lower()


def test_every_curve_of_the_reproduction_has_its_own_colour():
    names = ["offline", "new_partial", "bct", "rank_merge", "rt_merge", "full", "full_rho",
             *(f"full_rho@{order}" for order in plots.ORDER_COLORS)]
    colours = [plots.method_color(name, position) for position, name in enumerate(names)]
    assert len(set(colours)) == len(names)
    assert plots.method_color("full_rho@oracle") == plots.method_color("full@oracle", 7)  # the order's


def test_teaching_figures():
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 7, 7])
    fig = plots.projection_figure(rng.normal(size=(6, 2)), rng.normal(size=(6, 2)), labels,
                                  FASHION_MNIST_CLASSES, seen_by_old=[0, 1])
    legend = [t["name"] for t in fig.to_dict()["data"] if t.get("showlegend")]
    assert legend == ["T-shirt/top", "Trouser", "Sneaker (new class)"]
    empty = np.zeros(0)
    dist = plots.score_distribution_figure([ScorePanel("before", "q", rng.random(50), empty, empty, rng.random(50)),
                                            ScorePanel("after", "q", rng.random(50), empty, empty, empty)], bins=10)
    assert len(dist.to_dict()["data"]) == 3 and len(dist.to_dict()["data"][0]["y"]) == 10
    with pytest.raises(ValueError, match="empty"):
        plots.score_distribution_figure([])


def test_curve_axis_is_scaled_to_the_data_with_references_inside():
    points = np.linspace(0, 1, 5)
    series = {"full": np.array([0.82, 0.84, 0.85, 0.86, 0.88]), "rank_merge": np.array([0.82, 0.83, 0.83, 0.85, 0.88])}
    fig = plots.curve_figure(points, series, references={"old/old": 0.80, "new/new": 0.88}, metric="top1").to_dict()
    low, high = fig["layout"]["yaxis"]["range"]
    assert 70 < low < 80 and 88 < high < 95  # not 0-100: the lines stay apart
    assert plots.y_range([np.array([0.0, 1.0])]) == [0.0, 100.0]  # clamped to the metric's range
