"""Tests for backfill.reproduce on a tiny randomly initialised suite (the real run is `backfill reproduce`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_suite import D_NEW, D_OLD, _record, build_suite

from backfill.checkpoints import save_checkpoint
from backfill.cli import main
from backfill.datasets import load_dataset
from backfill.models import ReverseTransform
from backfill.reproduce import measure_query_cost, reproduce
from backfill.suite import ModelSuite

N_IMAGES = 300


@pytest.fixture(scope="module")
def pretrained_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    setting = root / "fashion_mnist" / "homogeneous"
    setting.mkdir(parents=True)
    build_suite(setting)
    old_card = json.loads((setting / "old.json").read_text())
    new_card = json.loads((setting / "new.json").read_text())
    against = {"dataset": "fashion_mnist", "old_model": _record(old_card), "new_model": _record(new_card)}
    save_checkpoint(setting / "ablation" / "psi_mc_old.pt", ReverseTransform(D_NEW, D_OLD), {"kind": "psi", **against})
    return root


@pytest.fixture(scope="module")
def results(pretrained_root, tmp_path_factory, monkeypatch_module):
    test = load_dataset("fashion_mnist", "test")
    keep = np.random.default_rng(0).choice(len(test), N_IMAGES, replace=False)
    # reproduce() evaluates the whole test split; a subsample keeps the test fast.
    small = type(test)(test.images[keep], test.labels[keep], test.class_names, test.name, test.split)
    monkeypatch_module.setattr("backfill.reproduce.load_dataset",
                               lambda name, split, root=None: small if split == "test" else load_dataset(name, split))
    out = tmp_path_factory.mktemp("docs")
    (out / "results.json").write_text(json.dumps({"cifar100": {}}))  # an earlier run's other dataset
    return reproduce("fashion_mnist", out, pretrained=pretrained_root, points=5, progress=False), out


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.debian_fashion_mnist
def test_every_method_and_order_is_reported(results):
    rows = results[0]["homogeneous"]
    expected = {"new", "old", "offline", "new_partial", "bct", "rank_merge", "rt_merge", "full", "full_rho"}
    assert expected <= set(rows)
    best = [name for name in rows if "@" in name]
    assert {name.split("@")[1] for name in best} == {"old_centroid", "old_entropy", "predicted_gain", "oracle"}
    for name, row in rows.items():
        if name.startswith("_"):
            continue
        assert len(row["map"]) == 5
        assert row["map_at_100"] == row["map"][-1]
        assert 0.0 <= row["max_negative_flip"] <= 1.0


@pytest.mark.debian_fashion_mnist
def test_endpoints_follow_the_protocol(results):
    rows = results[0]["homogeneous"]
    meta = rows["_meta"]
    assert rows["old"]["map"] == pytest.approx([meta["old_map"]] * 5)
    assert rows["new_partial"]["map"][0] == 0.0
    # rank merge starts at old/old and ends at new/new (the full gallery is backfilled at 100%)
    assert rows["rank_merge"]["map"][0] == pytest.approx(meta["old_map"])
    assert rows["rank_merge"]["map"][-1] == pytest.approx(meta["new_map"])
    assert rows["old"]["relative_gain"] == pytest.approx(0.0)
    assert rows["new"]["relative_gain"] == pytest.approx(1.0)


@pytest.mark.debian_fashion_mnist
def test_ablation_rows_come_from_the_ablation_checkpoints(results):
    ablation = results[0]["homogeneous"]["_ablation"]
    assert set(ablation) == {"mc_joint", "mc_old"}
    assert ablation["mc_joint"]["map"] == results[0]["homogeneous"]["full"]["map"]


@pytest.mark.debian_fashion_mnist
def test_outputs_are_written_and_other_datasets_kept(results):
    _, out = results
    everything = json.loads((out / "results.json").read_text())
    assert everything["cifar100"] == {}
    assert "homogeneous" in everything["fashion_mnist"]
    md = (out / "results.md").read_text()
    assert "## fashion_mnist, homogeneous" in md and "rank merge" in md and "ablation" in md
    assert (out / "curves_fashion_mnist_homogeneous.png").read_bytes()[:4] == b"\x89PNG"


def test_query_cost_is_relative_to_the_new_model(pretrained_root):
    suite = ModelSuite.load(pretrained_root / "fashion_mnist" / "homogeneous")
    costs = measure_query_cost(suite, np.zeros((28, 28, 1), dtype=np.uint8), repeats=5)
    assert costs["new"] == pytest.approx(1.0)
    assert costs["rank_merge"] > costs["new_partial"]  # two backbones instead of one
    assert costs["rt_merge"] > 1.0 and costs["full_rho"] > costs["full"]


def test_missing_pretrained_setting_is_a_clear_cli_error(tmp_path, capsys):
    code = main(["reproduce", "--dataset", "fashion_mnist", "--pretrained", str(tmp_path), "--out", str(tmp_path)])
    assert code == 2
    assert "no trained setting" in capsys.readouterr().err


def test_partial_suite_reports_what_it_has(pretrained_root, tmp_path):
    src = pretrained_root / "fashion_mnist" / "homogeneous"
    dst = tmp_path / "fashion_mnist" / "homogeneous"
    dst.mkdir(parents=True)
    for name in ("old", "new"):
        for ext in (".pt", ".json"):
            shutil.copy(src / f"{name}{ext}", dst / f"{name}{ext}")
    suite = ModelSuite.load(dst)
    costs = measure_query_cost(suite, np.zeros((28, 28, 1), dtype=np.uint8), repeats=2)
    assert "bct" not in costs and "full" not in costs and "rank_merge" in costs


@pytest.mark.debian_fashion_mnist
def test_model_cards_are_written_from_the_json_cards(results, pretrained_root):
    readme = (pretrained_root / "README.md").read_text()
    assert "## fashion_mnist / homogeneous" in readme
    assert "| old |" in readme and "| psi |" in readme
    for name in ("old.pt", "new.pt", "bct.pt", "psi_mc.pt", "ablation/psi_mc_old.pt"):
        assert f"`{name}`" in readme


def test_missing_train_split_fails_fast_in_one_line(pretrained_root, tmp_path, capsys, monkeypatch):
    import time

    monkeypatch.setattr("backfill.datasets.DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    monkeypatch.delenv("BACKFILL_FASHION_MNIST", raising=False)
    start = time.perf_counter()
    code = main(["reproduce", "--dataset", "fashion_mnist", "--pretrained", str(pretrained_root),
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "apt-get install dataset-fashion-mnist" in err
    assert time.perf_counter() - start < 10  # before any embedding or curve
