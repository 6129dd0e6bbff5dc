"""Pictures and text of the explorer that are not charts: thumbnails, colours, the gallery blurb, CSV.

The charts are :mod:`backfill.plots` (shared with ``backfill reproduce``); this module holds what only the
app shows. No streamlit import: the app calls these and places the results.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from backfill.explorer.queries import Hit, MethodResult, Query
from backfill.explorer.session import Explorer
from backfill.methods import Method
from backfill.plots import SPACE_COLORS
from backfill.strategies import Side, Space, get_strategy

__all__ = ["CORRECT_COLORS", "DATASET_NAMES", "gallery_blurb", "hit_thumbnail", "method_card", "method_diagram",
           "results_csv", "sections", "thumbnail"]

#: Frame colour of a hit: green = the query's class, red = another class, grey = the query's class is unknown.
CORRECT_COLORS = {True: "#2ca02c", False: "#d62728", None: "#aaaaaa"}
DATASET_NAMES = {"fashion_mnist": "Fashion-MNIST", "cifar100": "CIFAR-100"}
# What the gallery holds, in words a visitor can check their upload against.
_CONTENTS = {
    "fashion_mnist": "clothing and shoes only (28x28 grey images)",
    "cifar100": "small colour photos (32x32) of animals, plants, vehicles, household objects and scenes",
}


def gallery_blurb(session: Explorer) -> str:
    """One sentence on what the gallery holds, e.g. "10,000 test images of Fashion-MNIST in 10 classes: ..."."""
    names = session.class_names
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    contents = _CONTENTS.get(session.dataset, "")
    dataset = DATASET_NAMES.get(session.dataset, session.dataset)
    return (f"The gallery: {session.gallery_size:,} test images of {dataset}{': ' + contents if contents else ''}"
            f", in {len(names)} classes ({shown}).")


def thumbnail(image: np.ndarray, size: int = 72, border: str | None = None, width: int = 4,
              badge: str | None = None, badge_color: str = "#1f77b4") -> Image.Image:
    """A square RGB thumbnail of a uint8 ``(H, W[, C])`` image.

    ``border``: frame colour; ``badge``: a short text on a ``badge_color`` strip at the bottom right (drawn
    into the image because captions cannot be coloured). Small images (28x28, 32x32) are enlarged with
    nearest-neighbour so their pixels stay crisp.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    pil = Image.fromarray(array.astype(np.uint8)).convert("RGB")
    inner = size - 2 * width if border else size
    resample = Image.Resampling.NEAREST if max(pil.size) < inner else Image.Resampling.BICUBIC
    pil = ImageOps.fit(pil, (inner, inner), method=resample)
    if border:
        pil = ImageOps.expand(pil, border=width, fill=border)
    if badge:
        draw = ImageDraw.Draw(pil)
        font = ImageFont.load_default(size=max(9, size // 7))
        height = max(11, size // 5)
        left, top, right, bottom = draw.textbbox((0, 0), badge, font=font)
        edge = size - (width if border else 0)  # inside the frame, bottom right
        x0, y0 = edge - (right - left) - 8, edge - height
        draw.rectangle((x0, y0, edge - 1, edge - 1), fill=badge_color)
        draw.text((x0 + 4, y0 + (height - (bottom - top)) / 2 - top), badge, fill="white", font=font)
    return pil


def hit_thumbnail(session: Explorer, hit: Hit, size: int = 80) -> Image.Image:
    """A hit framed green / red / grey (see :data:`CORRECT_COLORS`) with an "old"/"new" badge for the space
    its score came from (orange / blue)."""
    return thumbnail(session.image(hit.gallery_id), size=size, border=CORRECT_COLORS[hit.correct],
                     badge=hit.space.label, badge_color=SPACE_COLORS[hit.space])


def results_csv(shown: Sequence[tuple[Query, Sequence[MethodResult]]], ratio: float, order: str,
                class_names: Sequence[str]) -> str:
    """CSV text of the shown results: one row per (query, method, rank)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["query", "query_class", "predicted_class", "backfilled_percent", "order", "method",
                     "query_ap", "rank", "gallery_id", "class", "score", "space", "correct"])
    for query, results in shown:
        query_class = "" if query.label is None else class_names[query.label]
        predicted = "" if query.predicted is None else class_names[query.predicted]
        for result in results:
            ap = "" if result.ap is None else f"{result.ap:.6f}"
            for hit in result.hits:
                writer.writerow([query.name, query_class, predicted, f"{ratio * 100:g}", order, result.method, ap,
                                 hit.rank, hit.gallery_id, class_names[hit.label], f"{hit.score:.6f}",
                                 hit.space.label, "" if hit.correct is None else int(hit.correct)])
    return buffer.getvalue()


# The suite's models in words; the first three are full networks (a forward pass each), the rest small heads.
_MODELS = {"old": "old model", "new": "new model", "bct": "BCT model", "psi_regression": "ψ (regression)",
           "psi_mc": "ψ (metric-compatible)", "rho_mc": "ρ", "psi_mc_rho": "ψ trained with ρ"}
_NETWORKS = ("old", "new", "bct")
_QUERIES = {"old": "old query", "new": "new query", "bct": "BCT query", "transformed": "ψ(new query)"}


def method_card(method: Method) -> str:
    """Markdown for one method: its description, its per-query cost and what must be trained for it."""
    networks = [_MODELS[m] for m in method.query_models if m in _NETWORKS]
    heads = [_MODELS[m] for m in method.query_models if m not in _NETWORKS]
    passes = f"{len(networks)} forward pass{'es' if len(networks) > 1 else ''} per query ({' + '.join(networks)})"
    if heads:
        passes += f" plus the small {' and '.join(heads)}"
    trained = [m for m in method.query_models if m != "old"]
    if method.name == "offline":
        trained = ["new"]  # it switches to the new model at 100%
    needs = "nothing new" if not trained else ", ".join(_MODELS[m] for m in trained)
    return f"**{method.label}.** {method.description} *Cost:* {passes}. *Trained:* {needs}."


def method_diagram(method: Method, ratio: float = 0.4, width: int = 360, height: int = 54) -> Image.Image:
    """A picture of what ``method`` searches at ``ratio``: the gallery as a bar, re-embedded part first,
    each part labelled with the query that scores it and coloured by the space its scores come from (blue
    new, orange old), grey where the method cannot reach."""
    strategy = get_strategy(method.strategy)
    u_side, b_side = strategy.sides(ratio)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font(12)
    split = int(round(ratio * width))
    top = height // 2
    parts = ((0, split, b_side, Space.NEW), (split, width, u_side, Space.OLD))
    for x0, x1, side, stored in parts:
        if x1 <= x0:
            continue
        colour = SPACE_COLORS[side.space] if side is not None else "#dddddd"
        draw.rectangle((x0, top, x1 - 1, height - 1), fill=colour, outline="white")
        text = _side_text(side)
        draw.text((x0 + 4, top - 16), text, fill="black" if side is not None else "#888888", font=font)
        stored_text = "re-embedded part" if stored is Space.NEW else "not yet re-embedded"
        draw.text((x0 + 4, top + 6), stored_text, fill="white" if side is not None else "#888888", font=font)
    return image


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans (it has ψ and ρ; matplotlib ships it), else PIL's default font."""
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size=size)


def _side_text(side: Side | None) -> str:
    if side is None:
        return "not searched"
    return _QUERIES.get(side.query, side.query)


def sections(markdown: str) -> dict[str, str]:
    """``## key`` sections of a markdown text: key -> body (the tour's steps)."""
    out: dict[str, str] = {}
    key = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            key = line[3:].strip()
            out[key] = ""
        elif key is not None:
            out[key] += line + "\n"
    return {k: v.strip() for k, v in out.items()}
