"""Reload every exported artifact the way a user would and check it scores what the report says."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .data import Split
from .errors import VerificationError
from .export import load_model
from .training import accuracy, evaluate

# Different kernels (CUDA vs CPU, PyTorch vs ONNX Runtime) may flip a near-tie prediction; more than this
# many points of disagreement means the artifact is wrong, not noisy.
TOLERANCE = 0.005


def _pt2_predictor(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    module = torch.export.load(str(path)).module()
    return lambda images: module(images.cpu())


def onnx_predictor(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits from ``path`` run in ONNX Runtime on CPU, as a user without PyTorch would run it."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(session.run(None, {name: images.cpu().numpy()})[0]))

    return predict


def verify_artifacts(folder: Path, formats: list[str], test: Split, expected: float,
                     device: torch.device) -> dict[str, dict]:
    """Test accuracy of each reloaded format; raises if any differs from ``expected`` by over TOLERANCE."""
    scores = {"safetensors": evaluate(load_model(folder, device), test, device)}
    with torch.no_grad():
        if "pt2" in formats:
            scores["pt2"] = accuracy(_pt2_predictor(folder / "model.pt2"), test)
        if "onnx" in formats:
            scores["onnx"] = accuracy(onnx_predictor(folder / "model.onnx"), test)
    result = {name: {"accuracy": score, "agrees": abs(score - expected) <= TOLERANCE}
              for name, score in scores.items()}
    wrong = [f"{name} scores {score:.4f}" for name, score in scores.items() if not result[name]["agrees"]]
    if wrong:
        raise VerificationError(f"reloaded artifacts disagree with the reported accuracy {expected:.4f}: "
                                + ", ".join(wrong))
    return result
