"""Weights from safetensors files: a user's starting weights, checked tensor by tensor before anything is
loaded, and the job's own, loaded back into the model they were saved from."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .architectures import AUXILIARY_HEADS
from .errors import CheckpointError
from .models import ModelConfig
from .structure import head_layers


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state)`` for a state read from safetensors, which keeps tensors only: a
    state_dict also carries each module's version (``_metadata``), and some torchvision modules (MNASNet)
    refuse a state without it. The model's own versions are attached: the state is of this same definition."""
    versioned = OrderedDict(state)
    versioned._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(versioned)


def load_weights(model: nn.Module, path: Path, device: torch.device | str = "cpu") -> None:
    """Load weights the job saved itself (trusted: written by this code) into ``model``."""
    load_state(model, load_file(str(path), device=str(device)))


def _head_tensors(model: nn.Module) -> set[str]:
    names = {module: name for name, module in model.named_modules()}
    return {f"{names[head]}.{tensor}" for head in head_layers(model) for tensor, _ in head.named_parameters()}


def load_checkpoint(model: nn.Module, path: Path | None, config: ModelConfig, device: torch.device) -> list[str]:
    """Load a safetensors state into ``model``, or fail with one sentence about the spec field.

    A checkpoint whose only difference is the classifier's class count (ImageNet weights for a ten-class
    dataset) loads everything else and leaves the model's freshly initialised classifier in place; the names
    of those tensors are returned so the job can say so. Missing, unreadable, a directory, not safetensors, or
    other wrong shapes: the message has the same shape for each, and it never echoes the path, so it cannot
    tell which files exist. Tensor names do appear: they describe the model, not this machine. Auxiliary
    classifiers (GoogLeNet's, Inception v3's) are left out: the model is built without them.
    """
    wrong = CheckpointError(f"model.checkpoint: not a safetensors state of {config.arch} at width {config.width} "
                            f"with {config.num_classes} classes")
    try:
        if path is None or not path.is_file():  # not even open() a FIFO or a device
            raise wrong
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise wrong from exc
    auxiliary = AUXILIARY_HEADS.get(config.arch, ())
    state = {name: tensor for name, tensor in state.items() if not name.startswith(auxiliary)}
    expected = model.state_dict()
    reshaped = [name for name, tensor in state.items() if name in expected and tensor.shape != expected[name].shape]
    differences = [
        ("missing", [name for name in expected if name not in state]),
        ("unexpected", [name for name in state if name not in expected]),
        ("of another shape", reshaped),
    ]
    found = [f"{what}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
             for what, names in differences if names]
    reinitialised = sorted(reshaped) if len(found) == 1 and set(reshaped) <= _head_tensors(model) else []
    if found and not reinitialised:
        raise CheckpointError(f"{wrong} (tensors {'; '.join(found)})")
    for name in reinitialised:
        state[name] = expected[name]
    load_state(model, state)
    return reinitialised
