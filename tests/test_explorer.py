"""Tests for backfill.explorer (the app's computing side: session, queries, teaching data, display, cache).

A small suite is trained in seconds (tests/_app_builders.py: a few dozen SGD steps of tiny CNNs on part of
the bundled Fashion-MNIST test split), so embeddings are informative but nothing depends on the shipped
weights.
"""

from __future__ import annotations

import copy
import csv
import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _app_builders import quick_suite_dir
from PIL import Image

from backfill.evaluation import evaluate_curve
from backfill.explorer import (
    APP_ORDERS,
    DEFAULT_METHODS,
    MAX_UPLOAD_MB,
    ArrayCache,
    Explorer,
    Memo,
    ScorePanel,
    UploadError,
    Worker,
    available_orders,
    cross_space_order,
    gallery_query,
    method_card,
    method_diagram,
    model_view,
    prepare,
    projection,
    read_upload,
    results_csv,
    score_distributions,
    search,
    thumbnail,
    upload_queries,
    wait_until,
)
from backfill.indexing import BackfillIndex
from backfill.methods import METHODS
from backfill.ordering import order_by_score
from backfill.strategies import Space

PER_CLASS = 40  # gallery of 400 images: fast, and every class has 39 other members

PER_CLASS = 40  # gallery of 400 images: fast, and every class has 39 other members


@pytest.fixture(scope="module")
def suite_dir(pytestconfig) -> Path:
    return quick_suite_dir(pytestconfig)


@pytest.fixture(scope="module")
def explorer(suite_dir) -> Explorer:
    session = Explorer.from_directory(suite_dir, per_class=PER_CLASS, curve_queries=200)
    prepare(session, "random", DEFAULT_METHODS)
    return session


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
    query = gallery_query(explorer, gid)
    assert query.label == explorer.gallery.labels[gid] and query.gallery_id == gid
    result = search(explorer, query, "rank_merge", 0.5, "random", k=7)
    assert [h.rank for h in result.hits] == list(range(1, 8))
    assert gid not in [h.gallery_id for h in result.hits]
    # Same top-k as the index used directly, and the same AP as the engine's evaluator at this ratio.
    gallery = explorer.embeddings()["base"]
    direct = BackfillIndex(gallery, explorer.order("random")).search(
        "rank_merge", gallery.subset(np.array([gid])), 0.5, k=7, exclude=np.array([gid]))
    assert [h.gallery_id for h in result.hits] == direct.ids[0].tolist()
    assert [h.space for h in result.hits] == [Space(int(s)) for s in direct.spaces[0]]
    curve = evaluate_curve("rank_merge", gallery.subset(np.array([gid])), gallery, explorer.order("random"),
                           points=[0.5], exclude=np.array([gid]))
    assert result.ap == pytest.approx(curve.ap[0, 0])
    assert all(h.correct == (h.label == query.label) for h in result.hits)


def test_new_partial_reaches_only_the_backfilled_part(explorer):
    query = gallery_query(explorer, 0)
    n = len(explorer.gallery)
    assert search(explorer, query, "new_partial", 0.0, "random").hits == ()
    assert search(explorer, query, "new_partial", 0.0, "random").ap == 0.0
    half = search(explorer, query, "new_partial", 0.5, "random", k=20)
    assert {h.space for h in half.hits} == {Space.NEW}
    backfilled = set(explorer.order("random")[: n // 2].tolist())
    assert {h.gallery_id for h in half.hits} <= backfilled
    assert half.n_reachable in (n // 2, n // 2 - 1)
    full = search(explorer, query, "new_partial", 1.0, "random")
    assert full.n_reachable == n - 1


def test_rank_merge_mixes_spaces_mid_way(explorer):
    query = gallery_query(explorer, int(explorer.sample_ids()[0]))
    spaces = {h.space for h in search(explorer, query, "rank_merge", 0.5, "random", k=20).hits}
    assert search(explorer, query, "rank_merge", 0.0, "random").hits[0].space is Space.OLD
    assert search(explorer, query, "rank_merge", 1.0, "random").hits[0].space is Space.NEW
    assert spaces <= {Space.OLD, Space.NEW}


def test_curves_and_summary_are_consistent(explorer):
    refs = explorer.references("random")
    old = explorer.curve("old", "random").values["map"]
    naive = explorer.curve("new_partial", "random").values["map"]
    assert np.allclose(old, old[0])  # the old model does not care about backfilling
    assert naive[0] == 0.0 and naive[-1] == pytest.approx(refs["map"]["new/new"])
    rows = explorer.summary(DEFAULT_METHODS, "random", 0.5)
    assert [r.method.name for r in rows] == list(DEFAULT_METHODS)
    merge = next(r for r in rows if r.method.name == "rank_merge")
    values = explorer.curve("rank_merge", "random").values
    assert merge.map == pytest.approx(values["map"][10])
    assert merge.auc_map == pytest.approx(values["map"].mean())
    gain = (merge.auc_map - refs["map"]["old/old"]) / (refs["map"]["new/new"] - refs["map"]["old/old"])
    assert merge.relative_gain == pytest.approx(gain)
    assert merge.vs_naive == pytest.approx(values["map"][10] - naive[10])
    # rank merge starts at old/old and ends at new/new (method.md's endpoints)
    assert values["map"][0] == pytest.approx(refs["map"]["old/old"])
    assert values["map"][-1] == pytest.approx(refs["map"]["new/new"])


def test_orders_are_permutations_and_differ(explorer):
    n = len(explorer.gallery)
    assert explorer.orders == APP_ORDERS  # the quick suite has a gain predictor
    orders = {name: explorer.order(name) for name in explorer.orders}
    for order in orders.values():
        assert sorted(order.tolist()) == list(range(n))
    assert not np.array_equal(orders["random"], orders["old_entropy"])
    assert not np.array_equal(orders["old_entropy"], orders["oracle"])
    assert not np.array_equal(orders["old_entropy"], orders["predicted_gain"])
    predicted = explorer.suite.gain_predictor.priority(explorer.embeddings()["base"].old)
    np.testing.assert_array_equal(orders["predicted_gain"], order_by_score(predicted))
    with pytest.raises(ValueError, match="unknown order"):
        explorer.order("fastest")


def test_predicted_gain_is_offered_only_with_a_gain_predictor(explorer, suite_dir, tmp_path):
    assert available_orders(suite_dir) == APP_ORDERS
    assert available_orders(tmp_path) == ("random", "old_entropy", "oracle")
    without = copy.copy(explorer.suite)
    without.gain_predictor = None
    session = Explorer(without, explorer.gallery, curve_queries=30)
    assert session.orders == ("random", "old_entropy", "oracle")
    with pytest.raises(ValueError, match="this suite serves random, old_entropy, oracle"):
        session.order("predicted_gain")


def test_uploads_are_embedded_and_bad_ones_reported(explorer):
    image = Image.fromarray(explorer.gallery.images[5][..., 0]).convert("RGBA").resize((100, 80))
    queries, errors = upload_queries(explorer, [("shoe.png", _png(image)), ("notes.png", b"hello"),
                                               ("empty.jpg", b"")])
    assert [q.name for q in queries] == ["shoe.png"]
    assert len(errors) == 2 and errors[0].startswith("notes.png:") and errors[1].startswith("empty.jpg:")
    query = queries[0]
    assert query.label is None and query.gallery_id is None
    assert 0 <= query.predicted < 10 and 0 < query.confidence <= 1
    result = search(explorer, query, "full", 0.5, "random", k=5)
    assert result.ap is None and all(h.correct is None for h in result.hits)
    labelled = search(explorer, query.with_label(int(explorer.gallery.labels[5])), "full", 0.5, "random", k=5)
    assert labelled.ap is not None and all(h.correct is not None for h in labelled.hits)
    assert [h.gallery_id for h in labelled.hits] == [h.gallery_id for h in result.hits]


def test_results_csv_has_one_row_per_hit(explorer):
    query = gallery_query(explorer, 3)
    results = [search(explorer, query, m, 0.25, "random", k=4) for m in DEFAULT_METHODS]
    rows = list(csv.DictReader(io.StringIO(results_csv([(query, results)], 0.25, "random", explorer.class_names))))
    assert len(rows) == 4 * len(DEFAULT_METHODS) - (4 - len(results[0].hits))
    assert {r["method"] for r in rows} == set(DEFAULT_METHODS)
    assert all(r["backfilled_percent"] == "25" and r["space"] in ("old", "new") for r in rows)


def test_teaching_data_shapes(explorer):
    points = projection(explorer, per_class=20)
    assert points.old_xy.shape == points.new_xy.shape == (80, 2)
    assert set(np.unique(points.labels).tolist()) == {0, 1, 5, 6}  # two seen, two unseen classes
    panels = score_distributions(explorer, n_queries=50)
    assert [(p.method, p.query) for p in panels] == [("rank_merge", "old query"), ("rt_merge", "regression ψ"),
                                                     ("full", "metric-compatible ψ")]
    for panel in panels:
        series = (panel.old_pos, panel.old_neg, panel.new_pos, panel.new_neg)
        assert all(v.ndim == 1 and v.size > 0 for v in series)
        assert 0.0 <= cross_space_order(panel) <= 1.0


def test_cross_space_order_counts_pairs():
    panel = ScorePanel("full", "ψ", old_pos=np.array([0.9, 0.5]), new_neg=np.array([0.6, 0.5]),
                       new_pos=np.array([0.8]), old_neg=np.array([0.1, 0.9]))
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
    for i, size in enumerate([300, 300, 300]):
        entry = tmp_path / f"{i}.npz"
        entry.write_bytes(bytes(size))
        os.utime(entry, (1000 + i, 1000 + i))
    ArrayCache(tmp_path, max_bytes=700).prune()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.npz", "2.npz"]


def test_explorer_rejects_bad_arguments(explorer):
    with pytest.raises(ValueError, match="gallery id"):
        gallery_query(explorer, len(explorer.gallery))
    with pytest.raises(ValueError, match="ratio"):
        explorer.point_index(1.5)
    with pytest.raises(ValueError, match="curve points"):  # the engine checks n_points
        Explorer(explorer.suite, explorer.gallery, n_points=1)


# ------------------------------------------------------------------------------------------ ahead of time
def test_prefetch_computes_curves_in_the_background(suite_dir):
    session = Explorer.from_directory(suite_dir, per_class=10, curve_queries=30)
    assert not session.is_ready("oracle", DEFAULT_METHODS)
    session.prefetch("oracle", DEFAULT_METHODS)
    # The shown order first, then the other methods and orders, without anyone asking.
    assert wait_until(lambda: session.is_ready("oracle", DEFAULT_METHODS), timeout=120)
    assert wait_until(lambda: session.worker.pending == 0, timeout=120)
    assert "predicted_gain" in session.orders
    for order in session.orders:
        assert all(session.curve_ready(m.name, order) for m in session.methods)
    assert not session.worker.errors
    expected = Explorer.from_directory(suite_dir, per_class=10, curve_queries=30).curve("full", "oracle")
    np.testing.assert_array_equal(session.curve("full", "oracle").values["map"], expected.values["map"])


def test_memo_computes_once_across_threads():
    memo, calls = Memo(), []

    def slow():
        calls.append(1)
        time.sleep(0.1)
        return 42

    threads = [threading.Thread(target=memo.get, args=("k", slow)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and memo.peek("k") == 42 and "k" in memo and memo.peek("other") is None


def test_worker_runs_urgent_jobs_first_and_survives_errors():
    memo, done, gate = Memo(), [], threading.Event()
    worker = Worker(memo)
    worker.submit("gate", gate.wait, priority=0)  # holds the worker while the others queue up
    worker.submit("late", lambda: done.append("late"), priority=5)
    worker.submit("boom", lambda: 1 / 0, priority=1)
    worker.submit("early", lambda: done.append("early"), priority=2)
    worker.submit("late", lambda: done.append("late again"), priority=9)  # already queued, more urgently
    gate.set()
    deadline = time.monotonic() + 10
    while worker.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done == ["early", "late"]
    assert "ZeroDivisionError" in worker.errors["boom"]


def test_array_cache_round_trip_and_damaged_entries(tmp_path):
    cache = ArrayCache(tmp_path)
    arrays = {"base/old": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert cache.get_or_compute("k", lambda: arrays)["base/old"].shape == (2, 3)
    assert cache.get_or_compute("k", lambda: pytest.fail("recomputed"))["base/old"].tolist() == [[0, 1, 2], [3, 4, 5]]
    cache.path("k").write_bytes(b"damaged")
    assert cache.get("k") is None
    assert ArrayCache(None).get_or_compute("k", lambda: arrays) == arrays


def test_uploads_show_what_the_model_sees(explorer):
    photo = Image.new("RGB", (120, 80), (200, 30, 30))
    seen = model_view(photo, "fashion_mnist")
    assert seen.shape == (28, 28) and seen.dtype == np.uint8  # a small grey image
    queries, _ = upload_queries(explorer, [("red.png", _png(photo))])
    assert queries[0].model_image.shape == (28, 28) and queries[0].image.shape == (80, 120, 3)


def test_method_cards_state_cost_and_training():
    cards = {m.name: method_card(m) for m in METHODS}
    assert "2 forward passes per query (old model + new model)" in cards["rank_merge"]
    assert "*Trained:* new model, ψ (metric-compatible)" in cards["full"]
    assert "*Trained:* nothing new" in cards["old"]
    assert all(m.description in cards[m.name] for m in METHODS)
    picture = method_diagram(next(m for m in METHODS if m.name == "new_partial"), ratio=0.5, width=100)
    assert picture.size[0] == 100 and picture.getpixel((75, 50)) == (221, 221, 221)  # the unreachable half
