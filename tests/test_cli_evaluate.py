import json

import numpy as np
import pytest

from backfill.cli import main
from backfill.embeddings import Embeddings


@pytest.fixture
def emb_file(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    labels = rng.integers(0, 4, n)
    centres = rng.normal(size=(4, 6))
    arrays = {name: 2 * centres[labels] + rng.normal(size=(n, 6)) for name in ("old", "new", "transformed")}
    path = tmp_path / "emb.npz"
    Embeddings(labels, **arrays).save(path)
    return path


def test_evaluate_writes_the_json_contract(emb_file, tmp_path, capsys):
    out = tmp_path / "res" / "out.json"
    rc = main(["evaluate", str(emb_file), "--strategy", "rank_merge", "rt_merge", "--points", "11",
               "--seed", "3", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert len(res["points"]) == 11 and res["points"][0] == 0 and res["points"][-1] == 1
    assert set(res["strategies"]) == {"rank_merge", "rt_merge"}
    for entry in res["strategies"].values():
        for key in ("map", "top1", "top5"):
            assert len(entry[key]) == 11 and all(0 <= v <= 1 for v in entry[key])
        for key in ("auc_map", "auc_top1", "relative_gain"):
            assert isinstance(entry[key], float)
    assert {"old_map", "new_map"} <= set(res["reference"])
    assert "rank_merge" in capsys.readouterr().out


def test_evaluate_default_strategies_and_order_file(emb_file, tmp_path):
    order = tmp_path / "order.npy"
    np.save(order, np.arange(60)[::-1])
    out = tmp_path / "out.json"
    assert main(["evaluate", str(emb_file), "--order", str(order), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    # bct is missing from the file, so the default runs every other strategy
    assert list(res["strategies"]) == ["old", "offline", "new_partial", "rank_merge", "rt_merge"]
    assert len(res["points"]) == 21


def test_evaluate_errors(emb_file, tmp_path, capsys):
    assert main(["evaluate", str(emb_file), "--strategy", "bct"]) == 2
    assert "'bct'" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros(60, dtype=int))
    assert main(["evaluate", str(emb_file), "--order", str(bad)]) == 2
    assert "not a permutation" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.npz")]) == 2
    assert main(["evaluate", str(emb_file), "--points", "1"]) == 2
    nan_file = tmp_path / "nan.npz"
    bad_old = np.array([[np.nan, 1.0], [1.0, 0.0]])
    np.savez(nan_file, labels=np.zeros(2, int), old=bad_old, new=np.ones((2, 2)))
    assert main(["evaluate", str(nan_file)]) == 2
    assert "NaN" in capsys.readouterr().err


def test_repeated_strategy_flags_accumulate_without_duplicates(emb_file, tmp_path):
    out = tmp_path / "out.json"
    argv = ["evaluate", str(emb_file), "--strategy", "rank_merge", "--strategy", "rt_merge", "old",
            "--strategy", "rank_merge", "--points", "3", "--json", str(out)]
    assert main(argv) == 0
    assert list(json.loads(out.read_text())["strategies"]) == ["rank_merge", "rt_merge", "old"]


def test_full_is_rt_merge_on_transformed_reported_under_its_name(emb_file, tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main(["evaluate", str(emb_file), "--strategy", "full", "rt_merge", "--points", "5",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())["strategies"]
    assert list(res) == ["full", "rt_merge"]
    assert res["full"]["label"] == "full (rt_merge on transformed)"
    assert res["full"]["map"] == res["rt_merge"]["map"]  # the same computation, named as the method
    assert "full (rt_merge on transformed): the full method when transformed = psi_mc(new)" in capsys.readouterr().out


def test_full_on_a_file_embedded_for_another_variant_is_refused(emb_file, capsys):
    emb_file.with_suffix(".inputs.json").write_text(json.dumps({"variant": "base"}))
    assert main(["evaluate", str(emb_file), "--strategy", "full"]) == 2
    err = capsys.readouterr().err
    assert "--variant base" in err and "--variant full" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", str(emb_file), "--strategy", "rt_merge", "--points", "2"]) == 0


def test_rt_merge_on_a_full_file_says_it_is_the_full_method(emb_file, capsys):
    emb_file.with_suffix(".inputs.json").write_text(json.dumps({"variant": "full"}))
    assert main(["evaluate", str(emb_file), "--strategy", "rt_merge", "--points", "2"]) == 0
    assert "rt_merge here is the full method" in capsys.readouterr().out


def test_help_documents_repetition_and_aliases(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "repeat the flag" in text and "full = rt_merge" in text and "psi_mc(new)" in text


@pytest.mark.parametrize("content", ["labels,old\n1,2\n", "\x93NUMPY but not really"])
def test_a_file_that_is_not_npz_gets_one_line(tmp_path, capsys, content):
    text = tmp_path / "emb.npz"
    text.write_text(content)
    assert main(["evaluate", str(text)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a readable .npz file" in err
    assert "pickle" not in err


def test_an_order_file_that_is_not_npy_gets_one_line(emb_file, tmp_path, capsys):
    order = tmp_path / "order.npy"
    order.write_text("0 1 2 3\n")
    assert main(["evaluate", str(emb_file), "--order", str(order)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a .npy file" in err and "pickle" not in err
