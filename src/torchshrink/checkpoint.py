"""Checkpoints: weights in safetensors, and a JSON beside them saying how to rebuild the model.

A checkpoint is a folder holding ``model.safetensors`` and ``model.json``. The JSON names the model and
its constructor arguments, the training config, the metrics and the library versions. Both files are
written atomically; loading checks that every tensor is present with the right shape. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from torchshrink._io import atomic_write, atomic_write_json
from torchshrink.errors import CheckpointError
from torchshrink.models import MODELS, build_model
from torchshrink.provenance import versions

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "load_rewind", "versions", "WEIGHTS", "META", "REWIND"]

WEIGHTS, META, REWIND = "model.safetensors", "model.json", "rewind.safetensors"
FORMAT = "torchshrink-checkpoint"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model in eval mode and the JSON metadata."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path


def save_checkpoint(
    folder: str | os.PathLike[str],
    model: nn.Module,
    model_name: str,
    model_args: dict[str, Any] | None = None,
    rewind: dict[str, torch.Tensor] | None = None,
    **meta: Any,
) -> Path:
    """Write ``model`` to ``folder/model.safetensors`` and ``folder/model.json``; return the folder.

    ``rewind`` (a ``state_dict`` from early in training) goes to ``rewind.safetensors`` for lottery-ticket
    rewinding. The weights are written first and the JSON last, so a folder whose JSON exists is complete.
    """
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    info = {
        "format": FORMAT,
        "model": model_name,
        "model_args": model_args or {},
        "tensors": {k: list(v.shape) for k, v in state.items()},
        "versions": versions(),
        **meta,
    }
    atomic_write(
        folder / WEIGHTS, lambda tmp: safetensors.torch.save_file(state, str(tmp), metadata={"format": FORMAT})
    )
    if rewind is not None:
        rewind = {k: v.detach().cpu().contiguous() for k, v in rewind.items()}
        atomic_write(folder / REWIND, lambda tmp: safetensors.torch.save_file(rewind, str(tmp)))
    atomic_write_json(folder / META, info)
    return folder


def load_rewind(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The early-training weights saved beside a checkpoint, for ``--rewind``."""
    file = _resolve(path) / REWIND
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; only checkpoints from `torchshrink train` carry a rewind point")
    try:
        return safetensors.torch.load_file(str(file))
    except (OSError, safetensors.SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{file}: unreadable or truncated safetensors file ({exc})") from exc


def _resolve(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.is_dir():
        return path
    if path.name in (WEIGHTS, META):
        return path.parent
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint; pass the folder written by `torchshrink train`")
    raise CheckpointError(f"{path}: not a checkpoint folder (expected {WEIGHTS} and {META} inside)")


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint folder (or the path of either of its files) into a model in eval mode."""
    folder = _resolve(path)
    meta_path, weights_path = folder / META, folder / WEIGHTS
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise CheckpointError(f"{p}: missing; the checkpoint is incomplete, train again or pass another folder")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable JSON ({exc}); the checkpoint is corrupt") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a torchshrink checkpoint (format field missing or wrong)")
    name = meta.get("model")
    if name not in MODELS:
        raise CheckpointError(f"{meta_path}: unknown model {name!r}; known: {', '.join(MODELS)}")
    try:
        state = safetensors.torch.load_file(str(weights_path))
    except (OSError, safetensors.SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights_path}: unreadable or truncated safetensors file ({exc})") from exc
    try:
        model = build_model(name, **meta.get("model_args", {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: model arguments do not fit {name!r} ({exc})") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_path}: does not match model {name!r} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{weights_path}: tensor {key} has shape {list(tensor.shape)}, model {name!r} expects "
                f"{list(expected[key].shape)}"
            )
    model.load_state_dict(state)
    model.to(device).eval()
    return Checkpoint(model, meta, folder)
