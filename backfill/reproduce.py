"""``backfill reproduce``: the paper's comparison, measured with the shipped weights.

For each trained setting of a dataset (``pretrained/<dataset>/<setting>/``) this embeds the test split
with the suite, evaluates every method of :data:`backfill.suite.METHODS` along the backfill curve
(queries = the gallery, leave-one-out, method.md's protocol), adds the backfill-order comparison and, when
the ablation checkpoints exist, the metric-compatible loss ablation, then writes ``results.json``,
``results.md`` and one curve image per setting.

Choices this module makes (method.md leaves them open):

* Orders. ``random`` (seeded, the paper's) for every method. Three *deployable* orders computed from stored
  old embeddings only (:mod:`backfill.ordering`): ``old_centroid`` (distance to the nearest old-class
  centroid; centroids from the old model's training classes, 100 train images per class), ``old_entropy``
  (entropy of the old classifier on the stored old embedding) and ``predicted_gain``
  (:mod:`backfill.gain_prediction`, fitted on the mirrored and cropped train images). The *oracle* order peeks at
  new embeddings and labels (upper bound only). The best-order rows use the full method with the highest
  random-order AUC-mAP (``full_rho`` when it beats ``full``) and report every deployable order; "best" is
  picked on the test split itself, which the note in ``results.md`` says.
* Query cost = measured forward time of the models a method runs per query (batch of one image, median
  of repeated runs after warm-up) divided by one new-model forward. Index search is left out: every
  merge searches each gallery item once, in one space or the other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .checkpoints import load_checkpoint
from .datasets import ImageDataset, load_dataset, per_class_indices
from .embeddings import Embeddings
from .evaluation import Curve, curve_points, evaluate_curve
from .gain_prediction import GAIN_PREDICTOR_VIEW, fit_gain_predictor
from .images import preprocess
from .inference import embed_dataset, embed_images
from .methods import METHODS, ORDERS, Method, make_order
from .ordering import (
    class_centroids,
)
from .report import summarize_curve
from .strategies import get_strategy
from .suite import ModelSuite
from .transform_training import cache_features, default_rho_path

__all__ = ["SETTINGS", "ABLATION_VARIANTS", "evaluate_setting", "measure_query_cost", "old_class_centroids",
           "order_inputs", "reproduce", "write_markdown", "write_model_cards"]

SETTINGS = ("homogeneous", "heterogeneous")
#: Ablation checkpoints: ``<setting dir>/ablation/psi_mc_<variant>.pt``; ``joint`` is the suite's psi_mc.
ABLATION_VARIANTS = ("joint", "old", "new", "separate")
CENTROID_IMAGES_PER_CLASS = 100


def _median_seconds(calls: dict[str, Callable[[], Any]], repeats: int = 30) -> dict[str, float]:
    """Median wall time of each call over ``repeats`` rounds, after three warm-up rounds.

    The calls take turns within every round, so that the machine's drift (other load, clock changes) hits
    them alike: timed one after the other, the same model once measured 0.79x itself.
    """
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for round_ in range(3 + repeats):
            for name, fn in calls.items():
                start = time.perf_counter()
                fn()
                if round_ >= 3:
                    times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def measure_query_cost(suite: ModelSuite, image: np.ndarray, repeats: int = 30) -> dict[str, float]:
    """Per-query model cost of each method relative to one new-model forward pass.

    Args:
        suite: the models.
        image: one dataset image, uint8 ``(H, W, C)``.
        repeats: timed rounds (median taken; the models take turns within each round).

    Returns ``{method name: cost}`` for the methods whose models the suite has, plus ``"new"`` (= 1).
    """
    x = preprocess(image[None], suite.dataset).to(suite.device)
    with torch.inference_mode():
        new_emb = suite.new.embed(x)
    calls = {"old": lambda: suite.old.embed(x), "new": lambda: suite.new.embed(x)}
    for name in ("bct", "psi_regression", "psi_mc", "rho_mc", "psi_mc_rho"):
        model = getattr(suite, name)
        if model is not None:
            inp = x if name == "bct" else new_emb
            calls[name] = lambda m=model, i=inp: m.embed(i) if hasattr(m, "embed") else m(i)
    seconds = _median_seconds(calls, repeats)
    costs = {m.name: sum(seconds[name] for name in m.query_models) / seconds["new"]
             for m in METHODS if all(name in seconds for name in m.query_models)}
    return {"new": 1.0, **costs}


def old_class_centroids(suite: ModelSuite, data: str | None, seed: int = 0, *,
                        train: ImageDataset | None = None) -> np.ndarray:
    """Old-space centroids ``(C_old, d_old)`` of the old model's classes, from ``CENTROID_IMAGES_PER_CLASS``
    training images of each (the ``old_centroid`` order's input); ``train``: the train split, if loaded."""
    train = load_dataset(suite.dataset, "train", root=data) if train is None else train
    old_class_rows = np.flatnonzero(np.isin(train.labels, suite.old_classes))
    rows = old_class_rows[per_class_indices(train.labels[old_class_rows], CENTROID_IMAGES_PER_CLASS, seed)]
    if getattr(suite.old, "spec", {}).get("arch") == "pretrained":  # cached backbone features of the split
        train_old = embed_dataset(suite.old, train.images, suite.dataset)[torch.from_numpy(rows)]
    else:
        train_old = embed_images(suite.old, train.images[rows], suite.dataset)
    return class_centroids(train_old, train.labels[rows])[1]


def order_inputs(suite: ModelSuite, data: str | None, seed: int = 0) -> dict[str, Any]:
    """What the orders that need training data take (:func:`backfill.methods.make_order`'s keywords):
    ``old_centroids`` and, for a suite without ``gain_predictor.pt``, a ``gain_predictor`` fitted here on the
    ``GAIN_PREDICTOR_VIEW`` of every train image (for a pretrained backbone: the cached features
    ``pretrained/train.sh`` computes)."""
    train = load_dataset(suite.dataset, "train", root=data)
    inputs: dict[str, Any] = {"old_centroids": old_class_centroids(suite, data, seed, train=train)}
    if suite.gain_predictor is None:
        rows = cache_features(suite.old, suite.new, train, view=GAIN_PREDICTOR_VIEW, progress=False)
        inputs["gain_predictor"] = fit_gain_predictor(*rows, seed=seed).priority
    return inputs


def _row(curve: Curve, old: Curve, new_map: float, cost: float | None) -> dict[str, Any]:
    row = summarize_curve(curve, old=old, new_map=new_map)
    row["map_at_100"] = row["map"][-1]
    row["query_cost"] = cost
    return row


def _ablation(suite: ModelSuite, base: Embeddings, order: np.ndarray, points: np.ndarray, old: Curve,
              new_map: float) -> dict[str, Any]:
    """rt_merge with psi trained on each variant of the metric-compatible loss (``ablation/`` checkpoints).

    ``joint`` is the suite's ``psi_mc``. A variant trained with a head rho (``ablation/rho_mc_<variant>.pt``
    beside its psi: the new-space-only loss gives psi itself no gradient) is applied as psi(rho(new)), with
    rho(new) as the new-space embedding.
    """
    rows: dict[str, Any] = {}
    for variant in ABLATION_VARIANTS:
        path = suite.directory / "ablation" / f"psi_mc_{variant}.pt"
        if variant == "joint":
            psi, rho = suite.psi_mc, None
        elif path.exists():
            psi = load_checkpoint(path)[0]
            rho_path = default_rho_path(path)
            rho = load_checkpoint(rho_path)[0] if rho_path.exists() else None
        else:
            continue
        with torch.inference_mode():
            new = torch.from_numpy(base.new)
            if rho is not None:
                new = rho.eval()(new)
            emb = Embeddings(base.labels, base.old, new.numpy(), transformed=psi.eval()(new).numpy())
        curve = evaluate_curve("rt_merge", emb, emb, order, points=points, leave_one_out=True)
        label = f"L_MC {variant}" + (" (+ rho)" if rho is not None else "")
        rows[f"mc_{variant}"] = {**_row(curve, old, new_map, None), "label": label}
    return rows


def evaluate_setting(suite: ModelSuite, images: np.ndarray, labels: np.ndarray, data: str | None,
                     points: Sequence[float] | np.ndarray | None = None, seed: int = 0,
                     progress: bool = True) -> dict[str, Any]:
    """Every row of the comparison for one suite on one labelled image set (queries = gallery).

    Returns ``{row name: {"label", "map", "top1", "top5", "auc_map", "auc_top1", "relative_gain",
    "map_at_100", "max_negative_flip", "negative_flip", "query_cost", "order"}}`` plus ``"_ablation"`` when
    ablation checkpoints exist and ``"_meta"`` (reference values, orders, sizes).
    """
    pts = curve_points() if points is None else np.asarray(points, dtype=np.float64)
    inputs = order_inputs(suite, data, seed)  # first: it reads the train split, which may be missing
    variants = suite.embed(images, labels=labels, progress=progress, whole_split=True)
    base = variants["base"]
    n = base.n
    orders = {order.name: make_order(order.name, base, suite=suite, seed=seed, **inputs) for order in ORDERS}
    costs = measure_query_cost(suite, images[0])

    def run(strategy: str, emb: Embeddings, order: str, at: np.ndarray = pts) -> Curve:
        return evaluate_curve(strategy, emb, emb, orders[order], points=at, leave_one_out=True)

    old = run("old", base, "random", np.zeros(pts.size))  # ratio-independent: same ranking everywhere
    new = run("new", base, "random", np.ones(1))
    new_map = float(new.map[0])
    rows: dict[str, Any] = {}
    new_row = _row(run("new", base, "random", np.ones(pts.size)), old, new_map, costs.get("new"))
    rows["new"] = {**new_row, "label": "new/new (reference)"}
    methods: list[Method] = [m for m in METHODS if m.variant in variants
                             and set(get_strategy(m.strategy).required_arrays) <= set(variants[m.variant].available)]
    for method in tqdm(methods, desc="methods", disable=not progress, leave=False):
        curve = run(method.strategy, variants[method.variant], "random")
        rows[method.name] = {**_row(curve, old, new_map, costs.get(method.name)), "label": method.label,
                             "order": "random"}
    full_names = [m for m in ("full", "full_rho") if m in rows]
    if full_names:
        best = max(full_names, key=lambda m: rows[m]["auc_map"])
        for order in (o.name for o in ORDERS if o.name != "random"):
            curve = run("rt_merge", variants["full" if best == "full" else "full_rho"], order)
            rows[f"{best}@{order}"] = {**_row(curve, old, new_map, costs.get(best)),
                                       "label": f"{rows[best]['label']}, {order} order", "order": order}
        ablation = _ablation(suite, base, orders["random"], pts, old, new_map)
        if ablation:
            rows["_ablation"] = ablation
    rows["_meta"] = {"n_gallery": n, "n_queries": old.n_queries, "old_map": float(old.map[0]),
                     "new_map": new_map, "old_top1": float(old.top1[0]), "new_top1": float(new.top1[0]),
                     "points": pts.tolist(), "seed": seed}
    return rows


# ----------------------------------------------------------------------------------------------- report
_COLUMNS = ("AUC-mAP", "AUC-top1", "rel. gain", "mAP@100%", "max neg. flip", "query cost")


def _fmt(value: float | None, scale: float = 100.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _table(rows: dict[str, Any]) -> list[str]:
    lines = ["| method | " + " | ".join(_COLUMNS) + " |", "|---" * (len(_COLUMNS) + 1) + "|"]
    for name, row in rows.items():
        if name.startswith("_"):
            continue
        cost = "-" if row.get("query_cost") is None else f"{row['query_cost']:.2f}x"
        gain = row.get("relative_gain")
        lines.append(
            f"| {row['label']} | {_fmt(row['auc_map'])} | {_fmt(row['auc_top1'])} | "
            f"{'-' if gain is None else f'{gain * 100:.0f}%'} | {_fmt(row['map_at_100'])} | "
            f"{_fmt(row.get('max_negative_flip'))} | {cost} |"
        )
    return lines


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """Render ``results`` (``{dataset: {setting: rows}}``) as the tables of ``results.md``."""
    out = ["# Reproduction of the online-backfilling comparison", "",
           "Made by `backfill reproduce` with the weights in `pretrained/`; every number is measured. Queries",
           "are the test split, which is also the gallery (leave-one-out). mAP and top-1 in %; AUC = mean over",
           "21 backfill ratios 0, 0.05, ..., 1; relative gain = (AUC-mAP - old/old) / (new/new - old/old);",
           "max neg. flip = worst share of queries (%) whose old-model top-1 was right and is wrong at some",
           "ratio; query cost = measured model forward time per query relative to one new-model forward",
           "(a timing: it moves by a few % between runs; every other number is reproduced exactly).",
           "Rows `..., <order> order` use the best full method with another backfill order; the deployable",
           "orders (`old_entropy`, `old_centroid`, `predicted_gain`) rank the gallery by its stored old",
           "embeddings (the last two fitted on train images), `oracle` peeks at new embeddings and labels",
           "(upper bound). The best deployable order is picked on this same split.", ""]
    for dataset, settings in results.items():
        for setting, rows in settings.items():
            meta = rows.get("_meta", {})
            out += [f"## {dataset}, {setting}", "",
                    f"Gallery {meta.get('n_gallery')} images; old/old mAP {_fmt(meta.get('old_map'))}, "
                    f"new/new mAP {_fmt(meta.get('new_map'))}. Curves: `curves_{dataset}_{setting}.png`.", ""]
            out += _table(rows) + [""]
            if len(rows.get("_ablation", {})) > 1:  # joint alone is the `full` row already
                out += [f"### Metric-compatible loss ablation ({dataset}, {setting}, random order)", ""]
                out += _table(rows["_ablation"]) + [""]
    path.write_text("\n".join(out))


def plot_curves(rows: dict[str, Any], title: str, path: Path) -> None:
    """Save the mAP curve of every row as a PNG (:func:`backfill.plots.curves_png`, the app's chart), with
    old/old and new/new as reference lines."""
    from .plots import curves_png

    series = {name: row["map"] for name, row in rows.items() if not name.startswith("_") and name not in ("old", "new")}
    meta = rows["_meta"]
    path.write_bytes(curves_png(np.asarray(meta["points"]), series,
                                labels={name: rows[name]["label"] for name in series},
                                references={"old/old": meta["old_map"], "new/new": meta["new_map"]}, title=title))


def reproduce(dataset: str, out: str | Path = "docs", data: str | None = None,
              pretrained: str | Path = "pretrained", settings: Sequence[str] | None = None,
              points: int = 21, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Run the comparison for every trained setting of ``dataset``; update ``out/results.{json,md}``.

    Results of other datasets already in ``out/results.json`` are kept, so running this once per dataset
    builds the whole report. Returns this dataset's results ``{setting: rows}``. Raises
    ``FileNotFoundError`` when no setting of ``dataset`` is trained.
    """
    out = Path(out)
    root = Path(pretrained) / dataset
    chosen = [s for s in (settings or SETTINGS) if (root / s / "old.pt").exists()]
    if not chosen:
        raise FileNotFoundError(f"no trained setting under {root} (expected {root}/<setting>/old.pt)")
    test = load_dataset(dataset, "test", root=data)
    load_dataset(dataset, "train", root=data)  # the old-class centroids need it: say so now, not minutes later
    results: dict[str, Any] = {}
    for setting in chosen:
        suite = ModelSuite.load(root / setting)
        results[setting] = evaluate_setting(suite, test.images, test.labels, data, curve_points(points), seed,
                                            progress)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    everything = json.loads(json_path.read_text()) if json_path.exists() else {}
    everything[dataset] = results
    json_path.write_text(json.dumps(everything, indent=1))
    write_markdown(everything, out / "results.md")
    for setting, rows in results.items():
        plot_curves(rows, f"{dataset}, {setting}: mAP along the backfill", out / f"curves_{dataset}_{setting}.png")
    write_model_cards(pretrained)
    return results


def _views_note(views: list[str]) -> str:
    """`` (clean + flip views)`` for a head that learned from more than the clean train images, else ``""``."""
    return "" if views == ["clean"] else f" ({' + '.join(views)} views)"


def _architecture(card: dict[str, Any]) -> str:
    m = card.get("model", {})
    if m.get("arch") in ("psi", "rho"):
        d_in, d_out = m.get("d_in", m.get("d")), m.get("d_out", m.get("d"))
        return f"{m['arch']} " + (f"linear {d_in}->{d_out}" if m.get("hidden") is None
                                  else f"MLP {d_in}->{m['hidden']}->{d_out}")
    if m.get("arch") == "gain":
        correlation = card.get("metrics", {}).get("test_rank_correlation")
        return (f"MLP {m['d_old']}->{m['hidden']}->1 on the {card.get('training', {}).get('view')} views"
                + ("" if correlation is None else f"; rank correlation with the oracle's gain on the test split "
                                                  f"{correlation:.2f}"))
    if m.get("arch") == "pretrained":
        scale = f", cosine classifier s = {m['logit_scale']:g}" if m.get("logit_scale") else ""
        return (f"frozen {m['backbone']} ({m['resolution']} px) + head {m['hidden']}->{card.get('embedding_dim')}"
                f"{scale}{_views_note(card.get('backbone', {}).get('views', ['clean']))}")
    depth = f"-{m['depth']}" if "depth" in m else ""
    return f"{m.get('arch')}{depth} width {m.get('width')}, dim {card.get('embedding_dim')}"


def _made_elsewhere(card: dict[str, Any], card_path: Path) -> bool:
    """Whether the card's command wrote its output into another folder (a file shared by two settings)."""
    words = card.get("command", "").split()
    out = words[words.index("--out") + 1] if "--out" in words[:-1] else None
    return out is not None and Path(out).parent != card_path.parent


def write_model_cards(pretrained: str | Path = "pretrained") -> Path:
    """Write ``pretrained/README.md``: one table per trained setting, read from the JSON cards only (so it
    does not depend on where a reproduction wrote its results).

    Columns: file, kind, architecture, classes, epochs, training data, test accuracy (backbones) and the
    command that made the file. Returns the path written.
    """
    root = Path(pretrained)
    out = ["# Shipped weights", "",
           "Made by `pretrained/train.sh` on this project's 2-core CPU (no GPU); each `NAME.pt` has its full card",
           "in `NAME.json` (architecture, classes, data source and split, normalisation, epochs, seed, the exact",
           "command, library versions, per-epoch history, metrics, SHA-256). Training data: the train split",
           "(CIFAR-100: this project's fixed 500/100-per-class split; Fashion-MNIST: the official split).",
           "Test accuracy is on the test split, over the classes the model was trained on. Retrieval numbers:",
           "`docs/results.md` (`backfill reproduce`).", ""]
    for card_path in sorted(root.glob("*/*/old.json")):
        setting_dir = card_path.parent
        dataset, setting = setting_dir.parent.name, setting_dir.name
        out += [f"## {dataset} / {setting}", ""]
        out += ["| file | kind | architecture | classes | epochs | train images | test acc | command |",
                "|---|---|---|---|---|---|---|---|"]
        for path in sorted(setting_dir.glob("*.json")) + sorted(setting_dir.glob("ablation/*.json")):
            card = json.loads(path.read_text())
            training = card.get("training", {})
            denominator = training.get("denominator", training.get("variant"))  # "variant" in older cards
            classes = card.get("classes")
            n_classes = f"0-{max(classes)}" if classes else "-"
            images = training.get("train_images") or training.get("train_features") or training.get("rows") or "-"
            acc = card.get("metrics", {}).get("test_acc")
            out.append(f"| `{path.relative_to(setting_dir).with_suffix('.pt')}` | {card.get('kind')}"
                       f"{' (' + denominator + ')' if denominator else ''} | "
                       f"{_architecture(card)} | {n_classes} | {card.get('epochs')} | {images} | "
                       f"{'-' if acc is None else f'{100 * acc:.1f}%'} | `{card.get('command', '-')}`"
                       f"{' (made elsewhere, copied here)' if _made_elsewhere(card, path) else ''} |")
        out.append("")
    path = root / "README.md"
    path.write_text("\n".join(out))
    return path
