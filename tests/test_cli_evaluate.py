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
