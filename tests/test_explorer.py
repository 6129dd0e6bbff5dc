"""Tests for backfill.explorer (the app's computing side) and backfill.plots (its figures).

A small suite is trained here in seconds (a few dozen SGD steps of tiny CNNs on part of the bundled
Fashion-MNIST test split), so embeddings are informative but nothing depends on the shipped weights.
``build_quick_suite`` is also used by tests/test_app.py and tests/test_browser.py.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backfill import plots
from backfill.checkpoints import save_checkpoint
from backfill.data import FASHION_MNIST_CLASSES, load_dataset, preprocess
from backfill.evaluation import evaluate_curve
from backfill.explorer import (
    DEFAULT_METHODS,
    MAX_UPLOAD_MB,
    Explorer,
    UploadError,
    cross_space_order,
    read_upload,
    thumbnail,
)
from backfill.indexing import BackfillIndex
from backfill.models import EmbeddingHead, ReverseTransform, SmallCNN

PER_CLASS = 40  # gallery of 400 images: fast, and every class has 39 other members


def _record(card: dict) -> dict:
    return {"name": card["weights_file"], "sha256": card["weights_sha256"]}


def _fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(x), (64,), generator=generator)
        _, logits = model(x[batch])
        loss = torch.nn.functional.cross_entropy(logits, y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()


def _fit_psi(psi: ReverseTransform, new: torch.Tensor, old: torch.Tensor, steps: int) -> None:
    optimiser = torch.optim.Adam(psi.parameters(), lr=1e-2)
    psi.train()
    for _ in range(steps):
        loss = ((psi(new) - old) ** 2).sum(dim=1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    psi.eval()


def build_quick_suite(directory: Path, steps: int = 40) -> Path:
    """Train and save a tiny Fashion-MNIST suite (old: classes 0-4, new: 0-9, BCT-free) in ``directory``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is several times faster on a busy 2-core machine
    try:
        return _build_quick_suite(directory, steps)
    finally:
        torch.set_num_threads(threads)


def _build_quick_suite(directory: Path, steps: int) -> Path:
    torch.manual_seed(0)
    data = load_dataset("fashion_mnist", "test")
    x_all = preprocess(data.images[:2000], "fashion_mnist")
    y_all = torch.as_tensor(data.labels[:2000])
    base = {"dataset": "fashion_mnist", "class_names": FASHION_MNIST_CLASSES}
    old_model, new_model = SmallCNN(8, 16, 5), SmallCNN(8, 16, 10)
    seen = y_all < 5
    _fit(old_model, x_all[seen], y_all[seen], steps)
    _fit(new_model, x_all, y_all, steps)
    directory.mkdir(parents=True, exist_ok=True)
    old = save_checkpoint(directory / "old.pt", old_model, {**base, "kind": "old", "classes": [*range(5)]})
    new = save_checkpoint(directory / "new.pt", new_model, {**base, "kind": "new", "classes": [*range(10)]})
    with torch.no_grad():
        old_emb, new_emb = old_model.embed(x_all[:1000]), new_model.embed(x_all[:1000])
    against = {"dataset": "fashion_mnist", "old_model": _record(old), "new_model": _record(new)}
    for name, psi_steps in (("psi_regression", steps), ("psi_mc", 3 * steps)):
        psi = ReverseTransform(16, 16)
        _fit_psi(psi, new_emb, old_emb, psi_steps)
        save_checkpoint(directory / f"{name}.pt", psi, {"kind": "psi", **against})
    rho = save_checkpoint(directory / "rho_mc.pt", EmbeddingHead(16), {"kind": "rho", **against})
    psi = ReverseTransform(16, 16)
    _fit_psi(psi, new_emb, old_emb, steps)
    save_checkpoint(directory / "psi_mc_rho.pt", psi, {"kind": "psi", **against, "rho_model": _record(rho)})
    return directory


def quick_suite_dir(pytestconfig) -> Path:
    """The quick suite, built once and kept in pytest's cache directory (rebuilt when it fails to load)."""
    from backfill.suite import ModelSuite

    cache = getattr(pytestconfig, "cache", None)  # None under `-p no:cacheprovider`
    directory = cache.mkdir("backfill-quick-suite-v1") if cache else Path(tempfile.mkdtemp(prefix="quick-suite-"))
    try:
        ModelSuite.load(directory)
    except (FileNotFoundError, ValueError):
        build_quick_suite(directory)
    return directory


@pytest.fixture(scope="module")
def suite_dir(pytestconfig) -> Path:
    return quick_suite_dir(pytestconfig)


@pytest.fixture(scope="module")
def explorer(suite_dir) -> Explorer:
    ex = Explorer.from_directory(suite_dir, per_class=PER_CLASS, curve_queries=200)
    ex.prepare("random", DEFAULT_METHODS)
    return ex


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ uploads
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"just some text, not an image", "not a recognised image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a"),  # a PNG signature with garbage after it
        (b"0" * (MAX_UPLOAD_MB * 2**20 + 1), f"over the {MAX_UPLOAD_MB} MB limit"),
    ],
    ids=["empty", "text", "corrupt", "oversized"],
)
def test_read_upload_names_the_file_and_the_reason(data, reason):
    with pytest.raises(UploadError, match=reason) as info:
        read_upload("holiday.png", data)
    assert str(info.value).startswith("holiday.png: ")


def test_read_upload_truncated_png_is_rejected():
    data = _png(Image.new("RGB", (64, 64), "red"))
    with pytest.raises(UploadError, match="truncated|corrupt|not a"):
        read_upload("cut.png", data[: len(data) // 2])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_read_upload_accepts_the_advertised_formats(fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buffer, format=fmt)
    assert read_upload(f"x.{fmt.lower()}", buffer.getvalue()).size == (40, 30)


def test_read_upload_takes_the_first_frame_of_an_animated_gif():
    frames = [Image.new("L", (8, 8), 0), Image.new("L", (8, 8), 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    image = read_upload("anim.gif", buffer.getvalue())
    assert np.asarray(image.convert("L")).max() == 0


def test_thumbnail_frames_and_enlarges_small_images():
    image = np.zeros((28, 28), dtype=np.uint8)
    thumb = thumbnail(image, size=72, border="#2ca02c", width=4)
    assert thumb.size == (72, 72)
    assert thumb.getpixel((0, 0)) == (44, 160, 44)
    assert thumb.getpixel((36, 36)) == (0, 0, 0)
    badged = thumbnail(image, size=72, border="#2ca02c", width=4, badge="new", badge_color="#1f77b4")
    assert badged.getpixel((66, 66)) == (31, 119, 180)  # the badge strip, inside the frame
    assert badged.getpixel((10, 10)) == (0, 0, 0)


# ------------------------------------------------------------------------------------------ explorer
def test_methods_follow_the_suite(explorer):
    names = [m.name for m in explorer.methods]
    # the quick suite has no bct.pt
    assert names == ["old", "offline", "new_partial", "rank_merge", "rt_merge", "full", "full_rho"]
    with pytest.raises(ValueError, match="'bct' is not available"):
        explorer.method("bct")


def test_gallery_query_search_matches_the_engine(explorer):
    gid = int(explorer.sample_ids()[2])
    query = explorer.gallery_query(gid)
    assert query.label == explorer.gallery.labels[gid] and query.gallery_id == gid
    result = explorer.search(query, "rank_merge", 0.5, "random", k=7)
    assert [h.rank for h in result.hits] == list(range(1, 8))
    assert gid not in [h.gallery_id for h in result.hits]
    # Same top-k as the index used directly, and the same AP as the engine's evaluator at this ratio.
    gallery = explorer.embeddings()["base"]
    direct = BackfillIndex(gallery, explorer.order("random")).search(
        "rank_merge", gallery.subset(np.array([gid])), 0.5, 7, exclude=np.array([gid]))
    assert [h.gallery_id for h in result.hits] == direct.ids[0].tolist()
    assert [h.space for h in result.hits] == [("old", "new")[s] for s in direct.spaces[0]]
    curve = evaluate_curve("rank_merge", gallery.subset(np.array([gid])), gallery, explorer.order("random"),
                           [0.5], exclude=np.array([gid]))
    assert result.ap == pytest.approx(curve.ap[0, 0])
    assert all(h.correct == (h.label == query.label) for h in result.hits)


def test_new_partial_reaches_only_the_backfilled_part(explorer):
    query = explorer.gallery_query(0)
    n = len(explorer.gallery)
    assert explorer.search(query, "new_partial", 0.0, "random").hits == ()
    assert explorer.search(query, "new_partial", 0.0, "random").ap == 0.0
    half = explorer.search(query, "new_partial", 0.5, "random", k=20)
    assert {h.space for h in half.hits} == {"new"}
    backfilled = set(explorer.order("random")[: n // 2].tolist())
    assert {h.gallery_id for h in half.hits} <= backfilled
    assert half.n_reachable in (n // 2, n // 2 - 1)
    full = explorer.search(query, "new_partial", 1.0, "random")
    assert full.n_reachable == n - 1


def test_rank_merge_mixes_spaces_mid_way(explorer):
    query = explorer.gallery_query(int(explorer.sample_ids()[0]))
    spaces = {h.space for h in explorer.search(query, "rank_merge", 0.5, "random", k=20).hits}
    assert explorer.search(query, "rank_merge", 0.0, "random").hits[0].space == "old"
    assert explorer.search(query, "rank_merge", 1.0, "random").hits[0].space == "new"
    assert spaces <= {"old", "new"}


def test_curves_and_summary_are_consistent(explorer):
    refs = explorer.references("random")
    old = explorer.curve("old", "random").values["map"]
    naive = explorer.curve("new_partial", "random").values["map"]
    assert np.allclose(old, old[0])  # the old model does not care about backfilling
    assert naive[0] == 0.0 and naive[-1] == pytest.approx(refs["map"]["new/new"])
    rows = explorer.summary(DEFAULT_METHODS, "random", 0.5)
    assert [r["method"] for r in rows] == list(DEFAULT_METHODS)
    merge = next(r for r in rows if r["method"] == "rank_merge")
    values = explorer.curve("rank_merge", "random").values
    assert merge["map"] == pytest.approx(values["map"][10])
    assert merge["auc_map"] == pytest.approx(values["map"].mean())
    gain = (merge["auc_map"] - refs["map"]["old/old"]) / (refs["map"]["new/new"] - refs["map"]["old/old"])
    assert merge["relative_gain"] == pytest.approx(gain)
    assert merge["vs_naive"] == pytest.approx(values["map"][10] - naive[10])
    # rank merge starts at old/old and ends at new/new (method.md's endpoints)
    assert values["map"][0] == pytest.approx(refs["map"]["old/old"])
    assert values["map"][-1] == pytest.approx(refs["map"]["new/new"])


def test_orders_are_permutations_and_differ(explorer):
    n = len(explorer.gallery)
    orders = {name: explorer.order(name) for name in ("random", "deployable", "oracle")}
    for order in orders.values():
        assert sorted(order.tolist()) == list(range(n))
    assert not np.array_equal(orders["random"], orders["deployable"])
    assert not np.array_equal(orders["deployable"], orders["oracle"])
    with pytest.raises(ValueError, match="unknown order"):
        explorer.order("fastest")


def test_uploads_are_embedded_and_bad_ones_reported(explorer):
    image = Image.fromarray(explorer.gallery.images[5][..., 0]).convert("RGBA").resize((100, 80))
    queries, errors = explorer.upload_queries([("shoe.png", _png(image)), ("notes.png", b"hello"),
                                               ("empty.jpg", b"")])
    assert [q.name for q in queries] == ["shoe.png"]
    assert len(errors) == 2 and errors[0].startswith("notes.png:") and errors[1].startswith("empty.jpg:")
    query = queries[0]
    assert query.label is None and query.gallery_id is None
    assert 0 <= query.predicted < 10 and 0 < query.confidence <= 1
    result = explorer.search(query, "full", 0.5, "random", k=5)
    assert result.ap is None and all(h.correct is None for h in result.hits)
    labelled = explorer.search(query.with_label(int(explorer.gallery.labels[5])), "full", 0.5, "random", k=5)
    assert labelled.ap is not None and all(h.correct is not None for h in labelled.hits)
    assert [h.gallery_id for h in labelled.hits] == [h.gallery_id for h in result.hits]


def test_results_csv_has_one_row_per_hit(explorer):
    query = explorer.gallery_query(3)
    results = [explorer.search(query, m, 0.25, "random", k=4) for m in DEFAULT_METHODS]
    rows = list(csv.DictReader(io.StringIO(explorer.results_csv([(query, results)], 0.25, "random"))))
    assert len(rows) == 4 * len(DEFAULT_METHODS) - (4 - len(results[0].hits))
    assert {r["method"] for r in rows} == set(DEFAULT_METHODS)
    assert all(r["backfilled_percent"] == "25" and r["space"] in ("old", "new") for r in rows)


def test_teaching_data_shapes(explorer):
    projection = explorer.projection(per_class=20)
    assert projection["old_xy"].shape == projection["new_xy"].shape == (80, 2)
    assert set(np.unique(projection["labels"]).tolist()) == {0, 1, 5, 6}  # two seen, two unseen classes
    panels = explorer.score_distributions(n_queries=50)
    assert list(panels) == ["rank merge: old query", "RT merge: regression ψ", "full: metric-compatible ψ"]
    for series in panels.values():
        assert all(v.ndim == 1 and v.size > 0 for v in series.values())
        assert 0.0 <= cross_space_order(series) <= 1.0


def test_cross_space_order_counts_pairs():
    panel = {"old space, same class": np.array([0.9, 0.5]), "new space, other class (neg)": np.array([0.6, 0.5]),
             "new space, same class": np.array([0.8]), "old space, other class (neg)": np.array([0.1, 0.9])}
    # old positives above new negatives: 0.9 beats both, 0.5 ties one -> (2 + 0.5) / 4; new vs old: 1 / 2
    assert cross_space_order(panel) == pytest.approx(0.5 * (2.5 / 4 + 0.5))


def test_disk_cache_reuses_results(suite_dir, tmp_path):
    first = Explorer.from_directory(suite_dir, per_class=10, curve_queries=50, cache_dir=tmp_path)
    curve = first.curve("rank_merge", "random").values["map"]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2  # gallery embeddings and one curve
    second = Explorer.from_directory(suite_dir, per_class=10, curve_queries=50, cache_dir=tmp_path)
    second.suite.embed = None  # would fail if the embeddings were recomputed
    np.testing.assert_array_equal(second.curve("rank_merge", "random").values["map"], curve)
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def test_disk_cache_prunes_least_recently_used(tmp_path):
    from backfill.explorer import _prune

    for i, size in enumerate([300, 300, 300]):
        entry = tmp_path / f"{i}.npz"
        entry.write_bytes(bytes(size))
        os.utime(entry, (1000 + i, 1000 + i))
    _prune(tmp_path, 700)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.npz", "2.npz"]


def test_explorer_rejects_bad_arguments(explorer):
    with pytest.raises(ValueError, match="gallery id"):
        explorer.gallery_query(len(explorer.gallery))
    with pytest.raises(ValueError, match="ratio"):
        explorer.point_index(1.5)
    with pytest.raises(ValueError, match="n_points"):
        Explorer(explorer.suite, explorer.gallery, n_points=1)


# ------------------------------------------------------------------------------------------ plots
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


def test_teaching_figures():
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 7, 7])
    fig = plots.projection_figure(rng.normal(size=(6, 2)), rng.normal(size=(6, 2)), labels,
                                  FASHION_MNIST_CLASSES, seen_by_old=[0, 1])
    legend = [t["name"] for t in fig.to_dict()["data"] if t.get("showlegend")]
    assert legend == ["T-shirt/top", "Trouser", "Sneaker (new class)"]
    dist = plots.score_distribution_figure({"before": {"old pos": rng.random(50), "new neg": rng.random(50)},
                                            "after": {"old pos": rng.random(50)}}, bins=10)
    assert len(dist.to_dict()["data"]) == 3 and len(dist.to_dict()["data"][0]["y"]) == 10
    with pytest.raises(ValueError, match="empty"):
        plots.score_distribution_figure({})
