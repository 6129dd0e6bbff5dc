"""Tests of the Streamlit app with ``streamlit.testing.v1.AppTest`` (no browser).

Most tests run the app on the quick suite of tests/_app_builders.py (a few seconds to train, cached in
pytest's cache directory) with a 400-image gallery; the heavy work is cached by ``st.cache_resource``, which
AppTest shares across runs in this process. ``test_default_page_renders`` runs the real default: the
shipped Fashion-MNIST weights in ``pretrained/fashion_mnist/homogeneous`` (on a 1,000-image gallery).
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from _app_builders import fake_cifar, quick_suite_dir
from PIL import Image
from streamlit.testing.v1 import AppTest

from backfill.explorer import MAX_UPLOAD_MB, Explorer, default_models_dir
from backfill.methods import METHODS, get_order

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 240  # the first run embeds the gallery and evaluates the curves
QUICK_ENV = {"BACKFILL_APP_PER_CLASS": "40", "BACKFILL_APP_CURVE_QUERIES": "200", "BACKFILL_APP_CACHE": "off"}


@pytest.fixture(scope="module")
def quick_env(pytestconfig):
    """Point the app at the quick suite (module-wide: AppTest reads os.environ in this process)."""
    env = {**QUICK_ENV, "BACKFILL_APP_MODELS": str(quick_suite_dir(pytestconfig))}
    saved = {name: os.environ.get(name) for name in [*env, "BACKFILL_CIFAR100"]}
    os.environ.update(env)
    os.environ.pop("BACKFILL_CIFAR100", None)
    yield env
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def explorer(quick_env) -> Explorer:
    """The same computations the app shows, for expected values."""
    return Explorer.from_directory(quick_env["BACKFILL_APP_MODELS"], per_class=40, curve_queries=200)


def settle(at: AppTest) -> AppTest:
    """Rerun while the page shows curves still being evaluated in the background (a browser polls instead)."""
    deadline = time.monotonic() + TIMEOUT
    while any("Evaluating the curves" in p.proto.text for p in at.get("progress")):
        assert time.monotonic() < deadline, "the curves never became ready"
        time.sleep(0.1)
        at.run()
    return at


def run_app(**params: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(params)
    settle(at.run())
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart(at: AppTest, index: int = 0) -> dict:
    """The plotly spec of the ``index``-th chart (0: mAP curves, 1: top-1 curves)."""
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def traces(at: AppTest, index: int = 0) -> dict[str, dict]:
    return {t["name"]: t for t in chart(at, index)["data"]}


def result_headers(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if "can reach" in m.value]


def png_bytes(array: np.ndarray, mode: str = "RGB", size=(90, 70)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).resize(size).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ default
def test_default_page_renders():
    """The real default (shipped Fashion-MNIST weights), as ``streamlit run app.py`` opens it."""
    models = default_models_dir("fashion_mnist", "homogeneous")
    assert (models / "new.pt").is_file(), f"the shipped weights are missing from {models}"
    saved = {name: os.environ.pop(name, None) for name in ("BACKFILL_APP_MODELS", "BACKFILL_APP_CACHE")}
    os.environ["BACKFILL_APP_PER_CLASS"], os.environ["BACKFILL_APP_CACHE"] = "100", "off"
    try:
        at = run_app()
    finally:
        os.environ.pop("BACKFILL_APP_PER_CLASS")
        for name, value in saved.items():
            if value is not None:
                os.environ[name] = value
            else:
                os.environ.pop(name, None)
    assert not at.error, [e.value for e in at.error]
    assert len(result_headers(at)) == 3
    assert set(traces(at)) >= {"naive (new-partial)", "rank merge", "full (metric-compatible ψ)", "current"}


# ------------------------------------------------------------------------------------------ quick suite
def test_page_renders_results_curves_and_metrics(quick_env, explorer):
    at = run_app()
    assert not at.error
    headers = result_headers(at)
    assert [h.split("**")[1] for h in headers] == ["naive (new-partial)", "rank merge",
                                                  "full (metric-compatible ψ)"]
    assert all("AP **" in h for h in headers)  # a sample query: its class is known
    mAP, top1 = traces(at, 0), traces(at, 1)
    assert set(mAP) == set(top1) == {"naive (new-partial)", "rank merge", "full (metric-compatible ψ)", "current"}
    expected = explorer.curve("rank_merge", "random").values["map"] * 100
    np.testing.assert_allclose(mAP["rank merge"]["y"], expected)
    assert [m.label for m in at.metric] == ["mAP now (full)", "AUC-mAP", "Relative gain"]
    assert len(at.get("plotly_chart")) == 4  # mAP, top-1 and the two teaching pictures
    assert [b.label for b in at.get("download_button")] == ["Results (CSV)", "Curves (HTML)", "Curves (PNG)"]


@pytest.mark.parametrize("percent", [0, 50, 100])
def test_slider_moves_marker_metrics_and_results(quick_env, explorer, percent):
    at = run_app()
    at.slider(key="percent").set_value(percent).run()
    settle(at)
    assert not at.exception
    current = traces(at)["current"]
    assert current["x"] == [percent] * 3
    point = explorer.point_index(percent / 100)
    full = explorer.curve("full", "random").values["map"][point]
    assert at.metric[0].value == f"{full:.1%}"
    assert f"full (metric-compatible ψ): mAP {full:.1%}" in " ".join(c.value for c in at.caption)
    vertical = [s for s in chart(at)["layout"]["shapes"] if s["x0"] == s["x1"]]
    assert [s["x0"] for s in vertical] == [percent]
    naive = result_headers(at)[0]
    n = len(explorer.gallery)
    if percent == 0:
        assert "can reach 0 gallery items" in naive and "AP **0.000**" in naive
        assert any("nothing reachable yet" in c.value for c in at.caption)
    elif percent == 100:
        assert f"can reach {n - 1:,} gallery items" in naive
    else:
        assert any(f"can reach {r} gallery" in naive for r in (n // 2 - 1, n // 2))


def test_sample_click_changes_the_query(quick_env, explorer):
    at = run_app()
    gid = int(explorer.sample_ids()[6])
    before = [m.value for m in at.markdown if m.value.startswith("**Query:**")]
    at.button(key=f"sample_{gid}").click().run()
    settle(at)
    assert not at.exception
    query = [m.value for m in at.markdown if m.value.startswith("**Query:**")]
    name = explorer.class_names[explorer.gallery.labels[gid]]
    assert query == [f"**Query:** test image #{gid}, class **{name}**."] != before
    assert at.radio(key="focus").value == f"sample:{gid}"
    highlighted = [b.key for b in at.button if b.key.startswith("sample_") and b.proto.type == "primary"]
    assert highlighted == [f"sample_{gid}"]


def test_upload_shows_prediction_and_results(quick_env, explorer):
    at = run_app()
    image = explorer.gallery.images[7][..., 0]
    at.file_uploader(key="uploads").upload("coat.png", png_bytes(image, "RGBA"), "image/png").run()
    settle(at)
    assert not at.exception and not at.error
    assert at.radio(key="focus").value.startswith("upload:")
    header = next(m.value for m in at.markdown if m.value.startswith("**Query:**"))
    assert header.startswith("**Query:** uploaded `coat.png`. The new model predicts **")
    assert all("AP **" not in h for h in result_headers(at))  # class unknown: no AP
    select = at.selectbox(key="label_upload:0:coat.png")
    select.set_value(int(explorer.gallery.labels[7])).run()
    assert all("AP **" in h for h in result_headers(at))


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.png", b"", "the file is empty (0 bytes)"),
        ("notes.png", b"these are my notes, not a picture", "this file is not a recognised image"),
        ("broken.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 64, "this file is not a recognised image"),
        ("cut.png", None, "this file is truncated or corrupt"),
        ("huge.png", b"\x89PNG" + b"\x00" * (MAX_UPLOAD_MB * 2**20), f"over the {MAX_UPLOAD_MB} MB limit"),
    ],
    ids=["zero-byte", "non-image", "corrupt", "truncated", "oversized"],
)
def test_bad_upload_shows_an_error_and_the_page_keeps_working(quick_env, explorer, name, data, reason):
    at = run_app()
    good = png_bytes(explorer.gallery.images[3][..., 0])
    if data is None:  # a real PNG cut in half
        noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        data = png_bytes(noisy, size=(64, 64))[:1000]
    at.file_uploader(key="uploads").set_value([(name, data, "image/png"), ("good.png", good, "image/png")]).run()
    settle(at)
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith(f"{name}: ") and reason in errors[0]
    assert [o for o in at.radio(key="focus").options if "good.png" in o]  # the good upload still works
    assert len(result_headers(at)) == 3 and len(at.get("plotly_chart")) == 4


def test_method_toggle_adds_a_method(quick_env):
    at = run_app()
    assert "old/old" not in traces(at)
    at.toggle(key="show_old").set_value(True).run()
    settle(at)
    assert not at.exception
    assert "old/old" in traces(at) and "old/old" in traces(at, 1)
    assert [h.split("**")[1] for h in result_headers(at)][-1] == "old/old"
    assert len(traces(at)["current"]["x"]) == 4


def test_order_choice_changes_the_curves(quick_env, explorer):
    at = run_app()
    at.radio(key="order").set_value("oracle").run()
    settle(at)
    assert not at.exception
    assert any("oracle" in c.value and c.value.startswith("Curves:") for c in at.caption)
    expected = explorer.curve("new_partial", "oracle").values["map"] * 100
    np.testing.assert_allclose(traces(at)["naive (new-partial)"]["y"], expected)
    assert not np.allclose(expected, explorer.curve("new_partial", "random").values["map"] * 100)


def test_cifar100_without_data_explains_what_to_do(quick_env):
    at = run_app()
    at.radio(key="dataset").set_value("cifar100").run()
    settle(at)
    assert not at.exception
    assert any("CIFAR-100 needs its data" in i.value for i in at.info)
    assert [b.label for b in at.sidebar.button] == ["Download CIFAR-100 with torchvision"]
    at.text_input(key="cifar_root").set_value("/nowhere/cifar").run()
    settle(at)
    assert not at.exception
    assert at.error and ("No trained models" in at.error[0].value or "not found" in at.error[0].value)


def test_missing_models_give_a_message_not_a_traceback(quick_env, monkeypatch, tmp_path):
    monkeypatch.setenv("BACKFILL_APP_MODELS", str(tmp_path / "absent"))
    at = run_app()
    assert at.error and "No trained models" in at.error[0].value
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("BACKFILL_APP_MODELS", str(tmp_path / "empty"))
    at = run_app()
    assert at.error and "old.pt" in at.error[0].value


def test_cifar100_with_data_and_models_runs(quick_env, tmp_path):
    data, suite = fake_cifar(tmp_path)
    at = run_app(order="predicted_gain")  # the Fashion-MNIST suite has a gain predictor, this CIFAR one none
    assert at.radio(key="order").value == "predicted_gain"
    at.radio(key="dataset").set_value("cifar100").run()
    settle(at)
    at.text_input(key="cifar_root").set_value(str(data))
    next(t for t in at.text_input if t.label == "Model directory").set_value(str(suite)).run()
    settle(at)
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = at.radio(key="order").options  # the labels
    assert at.radio(key="order").value == "random" and len(shown) == 3
    assert get_order("oracle").label in shown and get_order("predicted_gain").label not in shown
    headers = result_headers(at)
    assert [h.split("**")[1] for h in headers] == ["naive (new-partial)", "rank merge", "full (metric-compatible ψ)"]
    assert len(at.button) >= 10  # the sample grid (10 of the 100 classes)
    query = next(m.value for m in at.markdown if m.value.startswith("**Query:**"))
    assert "class **class_" in query
    assert set(traces(at)) == {"naive (new-partial)", "rank merge", "full (metric-compatible ψ)", "current"}


def test_cifar100_download_failure_is_reported(quick_env, monkeypatch):
    def offline(root=None):
        raise OSError("no route to host")

    monkeypatch.setattr("backfill.explorer.download_cifar100", offline)
    at = run_app()
    at.radio(key="dataset").set_value("cifar100").run()
    settle(at)
    at.sidebar.button[0].click().run()
    settle(at)
    assert not at.exception
    assert [e.value for e in at.sidebar.error] == ["Download failed: no route to host"]
    assert any("CIFAR-100 needs its data" in i.value for i in at.info)


# ------------------------------------------------------------------------------------------ teaching and sharing
def test_link_reopens_the_same_view_and_follows_the_widgets(quick_env, explorer):
    gid = int(explorer.sample_ids()[4])
    at = run_app(order="oracle", p="30", k="5", sample=str(gid))
    assert at.radio(key="order").value == "oracle" and at.slider(key="percent").value == 30
    assert at.slider(key="k").value == 5 and at.session_state["sample_id"] == gid
    assert len(traces(at)["current"]["x"]) == 3 and traces(at)["current"]["x"][0] == 30
    at.slider(key="percent").set_value(70).run()
    settle(at)
    assert at.query_params["p"] == "70" and at.query_params["order"] == "oracle"
    assert at.query_params["sample"] == str(gid) and at.query_params["dataset"] == "fashion_mnist"
    bad = run_app(order="fastest", p="250")  # a broken link falls back to the defaults
    assert bad.radio(key="order").value == "random" and bad.slider(key="percent").value == 50


def test_presenter_tour_sets_each_state_with_one_click(quick_env):
    at = run_app()
    at.button(key="tour_before").click().run()
    settle(at)
    assert at.slider(key="percent").value == 0 and at.toggle(key="show_old").value
    assert any("Before the upgrade" in m.value for m in at.markdown)
    assert "old/old" in traces(at)
    at.button(key="tour_full").click().run()
    settle(at)
    assert at.slider(key="percent").value == 30 and not at.toggle(key="show_old").value
    assert any("The full method at 30%" in m.value for m in at.markdown)


def test_how_it_works_explains_every_method_with_cost_and_a_picture(quick_env, explorer):
    at = run_app()
    cards = [m.value for m in at.markdown if "*Cost:*" in m.value]
    assert [c.split("**")[1] for c in cards] == [f"{m.label}." for m in explorer.methods]
    labels = {m.name: m.label for m in METHODS}
    assert any("2 forward passes per query" in c and labels["rank_merge"] in c for c in cards)
    assert len(at.get("image")) >= len(cards) + 10  # a picture per method, beside the samples and hits
    assert any("clothing and shoes only" in c.value for c in at.caption)  # what the gallery holds


def test_upload_is_shown_as_the_model_sees_it(quick_env, explorer):
    at = run_app()
    photo = np.zeros((60, 90, 3), dtype=np.uint8)
    photo[..., 0] = 220
    at.file_uploader(key="uploads").upload("red.png", png_bytes(photo), "image/png").run()
    settle(at)
    assert not at.exception
    captions = [c for image in at.get("image") for c in image.captions]
    assert "uploaded" in captions and "as the models see it" in captions
