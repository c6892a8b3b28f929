"""Artifacts of a pruned model, and loading it back without pickle.

``model.safetensors`` + ``model.json`` are canonical: the JSON names the architecture, the channels each
group kept (as indices into the original model) and the input contract, so :func:`load_model` rebuilds
the pruned module by replaying the surgery on a fresh model and loading the weights. ``model.pt2``
(torch.export) and ``model.onnx`` serve users without rlprune; both take any batch size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

from .checkpoint import load_weights
from .data import InputContract
from .files import write_atomically, write_serialized
from .models import ModelConfig, build_model, built_by
from .structure import PrunableGroup, find_groups, kept_by_name
from .surgery import prune_model

FORMAT = "rlprune.model/1"
MAX_BATCH = 65_536
MEDIA_TYPES = {
    ".safetensors": "application/octet-stream", ".json": "application/json",
    ".pt2": "application/zip", ".onnx": "application/octet-stream",
}


def save_weights(model: nn.Module, path: Path) -> None:
    """Write atomically, so an existing file is always a complete one (resume relies on it)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_serialized(path, lambda buffer: buffer.write(save(state)))


def model_description(config: ModelConfig, groups: Sequence[PrunableGroup], kept: Sequence[Sequence[int]],
                      contract: InputContract, classes: Sequence[str]) -> dict:
    return {
        "format": FORMAT,
        "model": config.to_dict(),
        "built_by": built_by(config.arch),
        "classes": list(classes),
        "input": contract.to_dict(),
        "groups": [
            {"name": g.name, "channels_before": g.size, "channels_after": len(k), "kept_indices": list(k)}
            for g, k in zip(groups, kept, strict=True)
        ],
        "weights": "model.safetensors",
    }


def example_input(contract: dict | InputContract, batch: int = 1) -> torch.Tensor:
    info = contract.to_dict() if isinstance(contract, InputContract) else contract
    return torch.zeros(batch, info["channels"], info["size"], info["size"])


def rebuild(description: dict) -> nn.Module:
    """The pruned architecture of ``model.json``, with freshly initialised weights."""
    if description.get("format") != FORMAT:
        raise ValueError(f"not an rlprune model description (format {description.get('format')!r})")
    model = build_model(ModelConfig(**description["model"]))
    example = example_input(description["input"])
    groups = find_groups(model, example)
    recorded = description["groups"]
    try:
        kept = kept_by_name(groups, [g["name"] for g in recorded], [g["kept_indices"] for g in recorded])
    except ValueError as error:
        raise ValueError("model.json's groups do not match the architecture it names") from error
    return prune_model(model, groups, kept, example)


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a pruned model from ``model.json`` + ``model.safetensors`` (no pickle involved)."""
    folder = Path(folder)
    description = json.loads((folder / "model.json").read_text())
    model = rebuild(description)
    load_weights(model, folder / description["weights"])
    return model.to(device).eval()


def export_program(model: nn.Module, contract: InputContract) -> torch.export.ExportedProgram:
    """The model traced once by ``torch.export`` with a dynamic batch dimension: ``model.pt2`` is this program,
    and ``model.onnx`` is converted from it rather than traced again (the trace is most of either's cost)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return torch.export.export(model.cpu().eval(), (example_input(contract, 2),), dynamic_shapes=({0: batch},))


def export_pt2(program: torch.export.ExportedProgram, path: Path) -> None:
    write_serialized(path, lambda buffer: torch.export.save(program, buffer))


def export_onnx(program: torch.export.ExportedProgram, path: Path) -> None:
    onnx_program = torch.onnx.export(program, dynamo=True, input_names=["input"], output_names=["logits"],
                                     verbose=False)
    write_atomically(path, lambda tmp: onnx_program.save(str(tmp), external_data=False))


def artifact_record(path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest(),
            "media_type": MEDIA_TYPES.get(path.suffix, "application/octet-stream")}
