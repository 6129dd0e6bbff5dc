"""Figure builders for the explorer app and the docs: backfill curves and the teaching pictures.

Every builder takes plain numpy arrays and dicts (no models, no streamlit) and returns a plotly
``go.Figure``, so the same figures serve the app, notebooks and tests (which read ``fig.to_dict()``).
``curves_png`` renders the curves with matplotlib for a static download, because plotly's own PNG
export needs kaleido and a browser, which are not available offline here.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from backfill.strategies import Space

# One colour per method, stable across figures, so "full" is the same green everywhere.
METHOD_COLORS: dict[str, str] = {
    "old": "#7f7f7f",
    "offline": "#bcbd22",
    "new_partial": "#d62728",
    "bct": "#9467bd",
    "rank_merge": "#ff7f0e",
    "rt_merge": "#1f77b4",
    "full": "#2ca02c",
    "full_rho": "#17becf",
}
#: One colour per backfill order other than random, for a method's curve in that order ("full_rho@oracle").
ORDER_COLORS: dict[str, str] = {"old_entropy": "#393b79", "old_centroid": "#637939", "predicted_gain": "#e377c2",
                                "oracle": "#8c564b"}
_FALLBACK_COLORS = ("#843c39", "#5254a3", "#bd9e39", "#7b4173", "#31a354")
METRIC_TITLES: dict[str, str] = {"map": "mAP", "top1": "Top-1 accuracy", "top5": "Top-5 accuracy"}
#: Colour of each embedding space: orange = old, blue = new (hit badges and score distributions).
SPACE_COLORS: dict[Space, str] = {Space.OLD: "#ff7f0e", Space.NEW: "#1f77b4"}


def method_color(name: str, position: int = 0) -> str:
    """Colour of method ``name`` (``"METHOD@ORDER"``: the order's); unknown names get a fallback colour picked
    by ``position``."""
    order = name.partition("@")[2]
    if order in ORDER_COLORS:
        return ORDER_COLORS[order]
    return METHOD_COLORS.get(name, _FALLBACK_COLORS[position % len(_FALLBACK_COLORS)])


def _check_points(points: np.ndarray, series: Mapping[str, np.ndarray]) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 1 or points.size == 0:
        raise ValueError(f"points must be a non-empty 1-D array of ratios, got shape {points.shape}")
    if np.any(points < 0) or np.any(points > 1):
        raise ValueError("points must be backfill ratios in [0, 1]")
    for name, values in series.items():
        if np.asarray(values).shape != points.shape:
            raise ValueError(
                f"series {name!r} has shape {np.asarray(values).shape}, expected {points.shape} "
                "(one value per point)"
            )
    return points


def curve_figure(
    points: np.ndarray,
    series: Mapping[str, np.ndarray],
    *,
    labels: Mapping[str, str] | None = None,
    references: Mapping[str, float] | None = None,
    ratio: float | None = None,
    metric: str = "map",
    title: str | None = None,
) -> go.Figure:
    """Line chart of a retrieval metric against the backfill percentage.

    Args:
        points: ``(P,)`` backfill ratios in [0, 1] (plotted as 0-100 %).
        series: method name -> ``(P,)`` metric values in [0, 1] (plotted as %), one line each.
        labels: method name -> legend label (defaults to the name).
        references: label -> constant value in [0, 1], drawn as dashed horizontal lines
            (e.g. ``{"old/old": 0.31, "new/new": 0.52}``).
        ratio: current slider position in [0, 1]; drawn as a vertical marker with the value of every
            series at that position (linear interpolation between points) as marker dots.
        metric: key of ``METRIC_TITLES`` naming the y axis.
        title: figure title (defaults to "<metric> during backfilling").

    Returns:
        A plotly figure, data as plain lists (readable JSON). Traces are named by the legend labels;
        the marker dots are one trace named ``"current"`` whose ``x`` is the slider position in %.
    """
    points = _check_points(points, series)
    if not series:
        raise ValueError("series is empty: nothing to plot")
    if ratio is not None and not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    labels = dict(labels or {})
    metric_title = METRIC_TITLES.get(metric, metric)
    x = (points * 100.0).tolist()
    # Traces, shapes and annotations are written as plain dicts and validated once by go.Figure: building
    # them with add_trace/add_hline/add_vline costs tens of milliseconds per slider move.
    data: list[dict] = []
    for position, (name, values) in enumerate(series.items()):
        label = labels.get(name, name)
        data.append({
            "type": "scatter", "x": x, "y": (np.asarray(values, dtype=np.float64) * 100.0).tolist(),
            "mode": "lines+markers", "name": label, "marker": {"size": 5},
            "line": {"color": method_color(name, position), "width": 2.5},
            "hovertemplate": "%{x:.0f}% backfilled: %{y:.2f}<extra>" + label + "</extra>",
        })
    shapes: list[dict] = []
    annotations: list[dict] = []
    for position, (label, value) in enumerate((references or {}).items()):
        y = float(value) * 100.0
        shapes.append({"type": "line", "xref": "x domain", "x0": 0, "x1": 1, "yref": "y", "y0": y, "y1": y,
                       "line": {"dash": "dash", "color": "#444444" if position else "#999999", "width": 1.5}})
        # old/old (first) is labelled bottom right and new/new top left: where the curves are not.
        annotations.append({"text": f"{label} {y:.1f}", "xref": "x domain", "yref": "y", "y": y,
                            "x": 1 if position == 0 else 0, "xanchor": "right" if position == 0 else "left",
                            "yanchor": "top" if position == 0 else "bottom", "showarrow": False})
    if ratio is not None:
        shapes.append({"type": "line", "xref": "x", "x0": ratio * 100.0, "x1": ratio * 100.0, "yref": "y domain",
                       "y0": 0, "y1": 1, "line": {"color": "black", "width": 1.5, "dash": "dot"}})
        current = [float(np.interp(ratio, points, np.asarray(v, dtype=np.float64))) * 100
                   for v in series.values()]
        data.append({
            "type": "scatter", "x": [ratio * 100.0] * len(current), "y": current, "mode": "markers",
            "name": "current", "showlegend": False, "hovertemplate": "%{y:.2f}<extra>at slider</extra>",
            "marker": {"size": 11, "symbol": "circle-open", "line": {"width": 2},
                       "color": [method_color(n, i) for i, n in enumerate(series)]},
        })
    layout = {
        "title": {"text": title or f"{metric_title} during backfilling"},
        "xaxis": {"title": {"text": "backfilled (%)"}, "range": [-2, 102]},
        "yaxis": {"title": {"text": f"{metric_title} (%)"},
                  "range": y_range(series.values(), (references or {}).values())},
        "legend": {"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
        "margin": {"l": 50, "r": 20, "t": 50, "b": 20},
        "height": 450, "shapes": shapes, "annotations": annotations,
    }
    return go.Figure(data=data, layout=layout)


def y_range(series: Iterable[np.ndarray], references: Iterable[float] = ()) -> list[float]:
    """Axis range in % that fits every value and reference line with a margin, within [0, 100].

    Scaling to the data keeps close lines apart (top-1 values often all sit within a few points); the
    margin keeps the reference labels inside the plot.
    """
    values = [float(v) for s in series for v in np.asarray(s, dtype=np.float64).ravel() if np.isfinite(v)]
    values += [float(r) for r in references]
    if not values:
        return [0.0, 100.0]
    low, high = min(values) * 100.0, max(values) * 100.0
    margin = max(0.08 * (high - low), 2.0)
    return [max(0.0, low - margin), min(100.0, high + margin)]


def curves_png(
    points: np.ndarray,
    series: Mapping[str, np.ndarray],
    *,
    labels: Mapping[str, str] | None = None,
    references: Mapping[str, float] | None = None,
    ratio: float | None = None,
    metric: str = "map",
    title: str | None = None,
    dpi: int = 120,
) -> bytes:
    """The same chart as ``curve_figure``, rendered with matplotlib as PNG bytes (for downloads/docs)."""
    points = _check_points(points, series)
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers
    from matplotlib.figure import Figure

    labels = dict(labels or {})
    metric_title = METRIC_TITLES.get(metric, metric)
    fig = Figure(figsize=(9.5, 4.2), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    for position, (name, values) in enumerate(series.items()):
        ax.plot(points * 100, np.asarray(values) * 100, marker="o", markersize=3,
                color=method_color(name, position), label=labels.get(name, name))
    for position, (label, value) in enumerate((references or {}).items()):
        ax.axhline(float(value) * 100, linestyle="--", linewidth=1,
                   color="#444444" if position else "#999999", label=f"{label} ({float(value) * 100:.1f})")
    if ratio is not None:
        ax.axvline(ratio * 100, color="black", linestyle=":", linewidth=1)
    ax.set_ylim(*y_range(series.values(), (references or {}).values()))
    ax.set_xlabel("backfilled (%)")
    ax.set_ylabel(f"{metric_title} (%)")
    ax.set_title(title or f"{metric_title} during backfilling")
    ax.grid(alpha=0.3)
    # beside the axes, not over them: with a dozen curves any corner inside hides some of them
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def figure_html(fig: go.Figure) -> str:
    """A standalone HTML page of ``fig`` with plotly.js embedded, so it opens offline."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def projection_figure(
    old_xy: np.ndarray,
    new_xy: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    seen_by_old: Sequence[int] = (),
) -> go.Figure:
    """Side-by-side 2-D scatter of the same images in the old and the new embedding space.

    Args:
        old_xy, new_xy: ``(n, 2)`` projected coordinates (e.g. the first two principal components).
        labels: ``(n,)`` class ids indexing ``class_names``.
        class_names: names of all classes.
        seen_by_old: class ids the old model was trained on; the others are drawn with crosses and
            marked "(new class)" because the old model never saw them.
    """
    old_xy, new_xy, labels = np.asarray(old_xy), np.asarray(new_xy), np.asarray(labels)
    if old_xy.shape != new_xy.shape or old_xy.ndim != 2 or old_xy.shape[1] != 2:
        raise ValueError(f"old_xy and new_xy must both be (n, 2), got {old_xy.shape} and {new_xy.shape}")
    if labels.shape != (old_xy.shape[0],):
        raise ValueError(f"labels must have shape ({old_xy.shape[0]},), got {labels.shape}")
    seen = set(int(c) for c in seen_by_old)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("old model's space", "new model's space"))
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
    for position, cls in enumerate(np.unique(labels)):
        mask = labels == cls
        name = str(class_names[int(cls)]) + ("" if int(cls) in seen else " (new class)")
        style = {"color": palette[position % len(palette)], "size": 6,
                 "symbol": "circle" if int(cls) in seen else "x"}
        for col, xy in ((1, old_xy), (2, new_xy)):
            fig.add_trace(
                go.Scatter(x=xy[mask, 0].tolist(), y=xy[mask, 1].tolist(), mode="markers", name=name,
                           legendgroup=name, showlegend=col == 1, marker=style, opacity=0.75),
                row=1, col=col,
            )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.1})
    return fig


def score_distribution_figure(panels: Sequence, titles: Sequence[str] | None = None, bins: int = 50) -> go.Figure:
    """Score densities (histograms drawn as step lines), one subplot per panel.

    Parameters
    ----------
    panels : sequence of :class:`backfill.explorer.ScorePanel`
        Anything with 1-D score arrays ``old_pos``, ``old_neg``, ``new_pos``, ``new_neg``: same-class and
        other-class pairs in the old space (orange) and the new space (blue); other-class pairs are dashed.
        Empty arrays are skipped.
    titles : sequence of str, optional
        Subplot titles (default: each panel's ``method``).
    bins : int
        Histogram bins over the common score range of all panels.

    Only the binned densities go into the figure (not the raw scores), so it stays small in the browser.
    """
    if not panels:
        raise ValueError("panels is empty: nothing to plot")
    series = (("old_pos", Space.OLD, "same class"), ("old_neg", Space.OLD, "other class"),
              ("new_pos", Space.NEW, "same class"), ("new_neg", Space.NEW, "other class"))
    arrays = [np.asarray(getattr(p, field), dtype=np.float64).ravel() for p in panels for field, _, _ in series]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        raise ValueError("no scores to plot")
    low = min(float(a.min()) for a in arrays)
    high = max(float(a.max()) for a in arrays)
    edges = np.linspace(low, max(high, low + 1e-6), bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    titles = tuple(titles) if titles is not None else tuple(str(getattr(p, "method", "")) for p in panels)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=titles, shared_yaxes=True)
    for col, panel in enumerate(panels, start=1):
        for field, space, kind in series:
            scores = np.asarray(getattr(panel, field), dtype=np.float64).ravel()
            if scores.size == 0:
                continue
            density, _ = np.histogram(scores, bins=edges, density=True)
            name = f"{space.label} space, {kind}"
            fig.add_trace(
                go.Scatter(
                    x=centres.tolist(), y=density.tolist(), mode="lines", name=name, legendgroup=name,
                    showlegend=col == 1,
                    line={"shape": "hvh", "width": 2, "dash": "solid" if field.endswith("pos") else "dash",
                          "color": SPACE_COLORS[space]},
                ),
                row=1, col=col,
            )
    fig.update_layout(height=340, margin={"l": 40, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.25})
    fig.update_xaxes(title_text="similarity score")
    return fig
