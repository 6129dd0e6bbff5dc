"""The package's public API: what ``import backfill`` offers and what it loads."""

import subprocess
import sys

import numpy as np

import backfill


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_import_loads_neither_torch_nor_streamlit_nor_faiss():
    _run("import backfill, sys; backfill.evaluate_strategies; "
         "assert not {'torch', 'streamlit', 'faiss', 'sklearn'} & set(sys.modules), sorted(sys.modules)")


def test_engine_evaluation_runs_without_torch():
    _run(
        "import sys, numpy as np, backfill\n"
        "rng = np.random.default_rng(0)\n"
        "labels = rng.integers(0, 3, 40)\n"
        "e = backfill.Embeddings(labels, old=rng.normal(size=(40, 4)), new=rng.normal(size=(40, 5)))\n"
        "out = backfill.evaluate_strategies(e, order=backfill.random_order(40), points=backfill.curve_points(3))\n"
        "assert set(out['strategies']) == {'old', 'offline', 'new_partial', 'rank_merge'}\n"
        "assert 'torch' not in sys.modules and 'streamlit' not in sys.modules\n"
    )


def test_index_is_loaded_on_first_use():
    _run("import backfill, sys; assert 'faiss' not in sys.modules; backfill.BackfillIndex; "
         "assert 'faiss' in sys.modules")


def test_all_names_resolve_and_version():
    assert backfill.__version__ == "0.1.0"
    for name in backfill.__all__:
        assert getattr(backfill, name) is not None, name
    assert set(backfill.__all__) <= set(dir(backfill))
    assert backfill.Space.NEW.label == "new"


def test_search_through_the_public_api(make_bundle):
    e = make_bundle(20, 2, seed=3)
    res = backfill.BackfillIndex(e, backfill.random_order(e.n, seed=1)).search("rank_merge", e, 0.5, k=3)
    assert res.ids.shape == (20, 3) and np.isin(res.spaces, [backfill.Space.OLD, backfill.Space.NEW]).all()
