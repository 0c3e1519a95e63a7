"""Read and write the train stage's model file: ``{"model_config": dict, "state_dict": ...}``."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gmgcore.models import VAE, build_model
from stages.atomic import write_bytes

__all__ = ["load_model", "save_model"]


def save_model(path: Path | str, model: VAE) -> None:
    """Write ``model``'s config and CPU weights atomically to ``path``.

    Serialised in memory first: ``torch.save`` to a file names the archive's records after the
    file, here a random temporary name, so equal weights would give different bytes (and a new
    DVC hash that reruns every later stage)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"model_config": dict(model.config), "state_dict": state}, buffer)
    write_bytes(path, buffer.getvalue())


def load_model(path: Path | str, device: str | torch.device = "cpu") -> VAE:
    """Rebuild the VAE stored at ``path`` (``torch.load(weights_only=True)``), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found (run the train stage first)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, Mapping) or not {"model_config", "state_dict"} <= set(blob):
        raise ValueError(f"{path}: expected keys 'model_config' and 'state_dict'")
    config: Mapping[str, Any] = blob["model_config"]
    try:
        model = build_model(config)
        model.load_state_dict(blob["state_dict"])
    except (ValueError, RuntimeError, KeyError) as err:
        raise ValueError(f"{path}: cannot rebuild the model ({err})") from err
    return model.to(device).eval()
