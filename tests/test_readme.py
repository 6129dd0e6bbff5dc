"""Every command of the README's "Command line" block runs and does what it says.

The commands are read from README.md and run as written, in a scratch directory holding a copy of
``pretrained/``; only the data change: the environment points CIFAR-100 (``DIR``) and Fashion-MNIST at tiny
random datasets, so the whole block takes about a minute instead of hours.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The ``backfill ...`` lines of the README's "## Command line" code block."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("backfill ")]


def _write_idx(path: Path, array: np.ndarray) -> None:
    array = np.asarray(array, dtype=np.uint8)
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape))
        f.write(array.tobytes())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("readme")
    rng = np.random.default_rng(0)
    cifar = root / "cifar100"
    cifar.mkdir()
    for split, per_class in (("train", 4), ("test", 2)):
        labels = np.repeat(np.arange(100), per_class).astype(np.uint8)
        np.savez(cifar / f"{split}.npz", images=rng.integers(0, 256, (labels.size, 32, 32, 3), dtype=np.uint8),
                 labels=labels)
    (cifar / "classes.json").write_text(json.dumps({"classes": [f"class_{i}" for i in range(100)]}))
    fmnist = root / "fashion_mnist"
    fmnist.mkdir()
    for prefix, n in (("train", 100), ("t10k", 50)):
        _write_idx(fmnist / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(fmnist / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    shutil.copytree(REPO / "pretrained", root / "pretrained")
    env = {**os.environ, "BACKFILL_FASHION_MNIST": str(fmnist), "BACKFILL_FEATURE_CACHE": str(root / "features"),
           "DIR": str(cifar)}
    return root, env


def test_the_readme_has_the_commands_a_user_needs():
    verbs = [shlex.split(c)[1] + (" " + shlex.split(c)[2] if shlex.split(c)[1] == "train" else "")
             for c in readme_commands()]
    assert {"evaluate", "features", "embed", "reproduce", "train old", "train new", "train bct",
            "train transform", "train gain-predictor"} <= set(verbs)


def test_every_readme_command_runs_as_written(scratch):
    root, env = scratch
    for command in readme_commands():
        args = [env["DIR"] if word == "DIR" else word for word in shlex.split(command)]
        done = subprocess.run([sys.executable, "-m", "backfill.cli", *args[1:]], cwd=root, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
        for out in re.findall(r"--(?:out|json) (\S+)", command):
            assert (root / out).exists(), f"{command} did not write {out}"
    results = json.loads((root / "docs" / "results.json").read_text())
    assert set(results) == {"fashion_mnist", "cifar100"}
    assert set(results["cifar100"]) == {"homogeneous", "heterogeneous"}
    evaluated = json.loads((root / "out.json").read_text())
    assert {"rank_merge", "full"} <= set(evaluated["strategies"])
