"""Checkpoints: a weights file plus a JSON card beside it, and validated loading.

``save_checkpoint("old.pt", model, card)`` writes ``old.pt`` (``torch.save`` of the state dict) and
``old.json`` (the card). The card is what a reader needs to use the weights correctly: the model spec
(``build_model`` rebuilds the module from it), ``kind`` (old/new/bct/psi/rho), ``dataset``, ``split``,
``classes``, ``class_names``, input normalisation, ``embedding_dim``, epochs, seed, the command line, library
versions, metrics, and the SHA-256 of the weights file (so a truncated or replaced file is detected before
torch tries to unpickle it).

``load_checkpoint(path, expect={...})`` rebuilds the model, loads the weights and checks each ``expect``
entry against the card; any problem raises :class:`CheckpointError` (a ``ValueError``) naming it.

Resumable training keeps the optimiser/scheduler/epoch/RNG state in a separate ``<name>.resume.pt``
(:func:`save_resume` / :func:`load_resume`), so shipped weights stay small.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import build_model

__all__ = [
    "CheckpointError",
    "CARD_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "read_card",
    "card_path",
    "resume_path",
    "save_resume",
    "load_resume",
    "library_versions",
]

CARD_FORMAT = "backfill-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or does not match what the caller asked for."""


def card_path(path: str | os.PathLike) -> Path:
    """The JSON card beside a weights file: ``x/old.pt`` -> ``x/old.json``."""
    return Path(path).with_suffix(".json")


def resume_path(path: str | os.PathLike) -> Path:
    """The training-state file of a weights file: ``x/old.pt`` -> ``x/old.resume.pt``."""
    return Path(path).with_suffix(".resume.pt")


def library_versions() -> dict[str, str]:
    """Versions of Python, torch, torchvision, numpy and this package, for cards."""
    import numpy

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        import torchvision

        versions["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is a dependency, but cards must not need it
        pass
    from . import __version__ as backfill_version

    versions["backfill"] = backfill_version
    return versions


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``model``'s weights to ``path`` and its card to ``path.with_suffix('.json')``.

    ``model`` must carry a ``spec`` dict (every model of ``backfill.models`` does). ``card`` holds at least
    ``kind``; the card written adds ``format``, ``model`` (the spec), ``embedding_dim`` (output size),
    ``weights_sha256``, ``created`` (UTC), ``versions`` and ``command`` (``sys.argv`` unless given).
    Files are written atomically (temp file + rename). Returns the card as written.
    """
    path = Path(path)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict):
        raise CheckpointError(f"cannot save {type(model).__name__}: it has no 'spec' dict to rebuild it from")
    if "kind" not in card:
        raise CheckpointError("the card must say the checkpoint's 'kind' (old, new, bct, psi, rho, ...)")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(path, lambda p: torch.save(state, p))
    full = {
        "format": CARD_FORMAT,
        **card,
        "model": spec,
        "embedding_dim": _output_dim(spec),
        "weights_file": path.name,
        "weights_sha256": _sha256(path),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": card.get("versions") or library_versions(),
        "command": card.get("command") or " ".join(sys.argv),
    }
    text = json.dumps(full, indent=2, sort_keys=False, default=_json_default) + "\n"
    _atomic_write(card_path(path), lambda p: p.write_text(text))
    return full


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"card value of type {type(obj).__name__} is not JSON-serialisable")


def _output_dim(spec: dict[str, Any]) -> int | None:
    return spec.get("embedding_dim", spec.get("d_out", spec.get("d")))


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check the JSON card of weights file ``path`` (``CheckpointError`` if missing/invalid)."""
    cpath = card_path(path)
    if not cpath.is_file():
        raise CheckpointError(f"checkpoint card {cpath} is missing; a checkpoint needs its .json card beside "
                              f"the weights to be rebuilt")
    try:
        card = json.loads(cpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint card {cpath} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT or "model" not in card:
        raise CheckpointError(f"{cpath} is not a backfill checkpoint card (expected format {CARD_FORMAT!r})")
    return card


def _lookup(card: dict[str, Any], key: str) -> Any:
    if key in card:
        return card[key]
    return card["model"].get(key, _MISSING)


_MISSING = object()


def check_card(card: dict[str, Any], expect: dict[str, Any] | None, name: str = "checkpoint") -> None:
    """Raise ``CheckpointError`` unless every ``expect`` entry matches the card.

    Keys are looked up in the card, then in its model spec (so ``arch``, ``num_classes``, ``d_in`` work).
    A list/tuple/set value means "any of these".
    """
    for key, want in (expect or {}).items():
        have = _lookup(card, key)
        if have is _MISSING:
            raise CheckpointError(f"{name}: its card has no {key!r} (expected {want!r})")
        ok = have in want if isinstance(want, (list, tuple, set, frozenset)) else have == want
        if not ok:
            raise CheckpointError(f"{name}: {key} is {have!r} but {want!r} was expected")


def load_checkpoint(path: str | os.PathLike, expect: dict[str, Any] | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of weights file ``path`` from its card and load the weights.

    Parameters
    ----------
    path : the weights file (``*.pt``); its card ``*.json`` must be beside it.
    expect : optional ``{key: value}`` the card must match, e.g. ``{"kind": "old", "dataset": "cifar100",
        "embedding_dim": 128}``; see :func:`check_card`.
    map_location : where to put the weights.

    Returns
    -------
    (model in eval mode, card dict).

    Raises ``CheckpointError`` naming the problem: missing weights or card, a card that does not match
    ``expect``, a weights file whose checksum differs from the card's (truncated or replaced), a file torch
    cannot read, or a state dict whose keys/shapes do not fit the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint weights {path} not found")
    card = read_card(path)
    check_card(card, expect, str(path))
    want_sha = card.get("weights_sha256")
    if want_sha and _sha256(path) != want_sha:
        raise CheckpointError(f"checkpoint weights {path} do not match their card's checksum: the file is "
                              f"truncated, corrupt or was replaced without its card")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError/EOFError/UnpicklingError for damaged files
        raise CheckpointError(
            f"checkpoint weights {path} cannot be read (truncated or corrupt?): {exc}"
        ) from exc
    try:
        model = build_model(card["model"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: card's model spec is invalid: {exc}") from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the architecture in its card: {exc}") from exc
    return model.to(map_location).eval(), card


def save_resume(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically write training state (optimiser, scheduler, epoch, RNG, model) to ``resume_path(path)``."""
    rpath = resume_path(path)
    rpath.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(rpath, lambda p: torch.save(state, p))
    return rpath


def load_resume(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """Training state saved by :func:`save_resume` for weights file ``path``, or ``None`` if there is none."""
    rpath = resume_path(path)
    if not rpath.is_file():
        return None
    try:
        return torch.load(rpath, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"training state {rpath} cannot be read (truncated or corrupt?): {exc}; "
                              f"delete it to start over") from exc
