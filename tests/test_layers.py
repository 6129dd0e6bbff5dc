"""The layers stay apart: the engine imports no torch, the learning side no streamlit or plotting.

docs/design.md draws the layers; the extras of pyproject.toml mirror them (core, train, app, serve).
"""

import subprocess
import sys

import pytest

ENGINE = ["embeddings", "strategies", "ordering", "indexing", "metrics", "evaluation", "report", "methods",
          "_validation"]
LEARNING = ["datasets", "images", "augmentation", "models", "backbones", "losses", "checkpoints", "inference",
            "training", "head_training", "transform_training", "suite", "reproduce", "cli"]


@pytest.mark.parametrize(("layer", "modules", "forbidden"), [
    ("engine", ENGINE, {"torch", "torchvision", "timm", "streamlit", "plotly", "matplotlib", "sklearn"}),
    ("learning", LEARNING, {"streamlit", "plotly", "matplotlib", "sklearn"}),
])
def test_layer_imports_nothing_from_the_layers_above(layer, modules, forbidden):
    code = (f"import sys\nfor m in {modules!r}:\n    __import__('backfill.' + m)\n"
            f"print(sorted(set({sorted(forbidden)!r}) & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            timeout=120).stdout.strip()
    assert loaded == "[]", f"the {layer} layer loads {loaded}"
