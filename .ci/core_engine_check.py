"""Run by .ci/run in a venv holding only the core install: the engine and `backfill evaluate` work there."""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import backfill

rng = np.random.default_rng(0)
labels = np.repeat(np.arange(5), 20)
old, new = (rng.normal(size=(100, d)).astype(np.float32) for d in (8, 12))
emb = backfill.Embeddings(labels, old / np.linalg.norm(old, axis=1, keepdims=True),
                          new / np.linalg.norm(new, axis=1, keepdims=True))
result = backfill.evaluate_strategies(emb, order=backfill.random_order(emb.n, seed=0),
                                      points=backfill.curve_points(5))
assert set(result["strategies"]) >= {"old", "new_partial", "rank_merge"}, result["strategies"].keys()
index = backfill.BackfillIndex(emb, backfill.random_order(emb.n, seed=0))  # faiss, core dependency
assert index.search("rank_merge", emb.subset(np.arange(3)), 0.5, k=5).ids.shape == (3, 5)
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "emb.npz"
    emb.save(path)
    subprocess.run([sys.executable, "-m", "backfill.cli", "evaluate", str(path), "--points", "5"], check=True)
for heavy in ("torch", "streamlit", "plotly", "sklearn"):
    assert heavy not in sys.modules, f"the engine imported {heavy}"
    try:
        __import__(heavy)
    except ImportError:
        continue
    raise AssertionError(f"{heavy} is installed in the core venv: the check proves nothing")
print("core install: engine, index and `backfill evaluate` work without torch, streamlit, plotly, sklearn")
