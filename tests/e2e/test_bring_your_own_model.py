"""A new user's path over HTTP only: upload an image-folder archive and the state dict of a model they trained
with torchvision (a DenseNet-121, whose layers read concatenated channels) or timm (a ConvNeXt), prune the
model they hold (no pretraining), download the ONNX file and score it on the archive's test images with nothing
but ``model.json``'s input contract and ONNX Runtime."""

from __future__ import annotations

import io
import tarfile

import httpx
import numpy as np
import onnxruntime
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save

from ..support.databases import fresh_redis
from ..support.jobs import all_events, finished, wait_for
from ..support.serving import served_api

SIZE = 32
CLASSES = ("blue", "green", "red")


def photo(label: int, seed: int) -> np.ndarray:
    """A 32x32 RGB image dominated by its class's colour, with noise, so a network can tell them apart."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, (SIZE, SIZE, 3))
    pixels[..., 2 - label] += 120
    return pixels.astype(np.uint8)


def archive(per_class: dict[str, int]) -> tuple[bytes, dict[str, list[tuple[np.ndarray, int]]]]:
    out, images = io.BytesIO(), {}
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for split, count in per_class.items():
            images[split] = []
            for label, name in enumerate(CLASSES):
                for i in range(count):
                    pixels = photo(label, hash((split, label, i)) % 2**32)
                    png = io.BytesIO()
                    Image.fromarray(pixels).save(png, format="PNG")
                    info = tarfile.TarInfo(f"{split}/{name}/{i}.png")
                    info.size = png.tell()
                    tar.addfile(info, io.BytesIO(png.getvalue()))
                    images[split].append((pixels, label))
    return out.getvalue(), images


def built_by_their_library(arch: str) -> torch.nn.Module:
    if arch.startswith("timm/"):
        import timm

        return timm.create_model(arch.removeprefix("timm/"), pretrained=False, num_classes=len(CLASSES))
    return torchvision.models.get_model(arch, weights=None, num_classes=len(CLASSES))


def trained(arch: str, images: list[tuple[np.ndarray, int]]) -> torch.nn.Module:
    """What a user brings: a model they built with torchvision or timm and trained on their own images."""
    torch.manual_seed(0)
    model = built_by_their_library(arch)
    x = torch.stack([torch.from_numpy(p).permute(2, 0, 1).float() / 255 for p, _ in images])
    x = (x - 0.5) / 0.25
    y = torch.tensor([label for _, label in images])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(8):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    with served_api("postgresql", root, worker=True, RLPRUNE_BROKER_URL=fresh_redis(8),
                    RLPRUNE_PROGRESS_INTERVAL_SECONDS="0.2") as (url, _, keys):
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['alice']}"}, timeout=120)
        try:
            yield client
        finally:
            client.close()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["densenet121", "timm/convnext_nano"])
def test_a_user_prunes_their_own_model_on_their_own_data(client, arch):
    body, images = archive({"train": 24, "test": 8})
    dataset = client.post("/datasets", content=body, headers={"Content-Type": "application/gzip"})
    assert dataset.status_code == 201, dataset.text
    assert dataset.json()["classes"] == list(CLASSES)
    user_model = trained(arch, images["train"])
    state = {k: v.contiguous() for k, v in user_model.state_dict().items()}
    weights = client.post("/checkpoints", files={"file": ("weights.safetensors", save(state))})
    assert weights.status_code == 201, weights.text

    spec = {
        "name": f"my-{arch}", "device": "cpu",
        "model": {"arch": arch, "checkpoint": f"upload:{weights.json()['id']}"},
        "dataset": {"name": "imagefolder", "root": f"upload:{dataset.json()['id']}", "image_size": SIZE},
        "pretrain": {"epochs": 0},
        # uniform l1: the architecture's path end to end is the subject here, the search's is tested elsewhere
        "prune": {"agent": "l1", "budget": {"keep": 0.5}},
        "finetune": {"epochs": 1, "batch_size": 16},
        "export": {"formats": ["safetensors", "onnx"]},
    }
    submitted = client.post("/jobs", json=spec)
    assert submitted.status_code == 202, submitted.text
    job = wait_for(client, submitted.json()["id"], finished, timeout=240)
    assert job["status"] == "succeeded", job.get("error")
    assert not [e for e in all_events(client, job["id"]) if e["type"] == "info" and "classifier" in e["message"]], \
        "the classifier fitted as it was"

    description = client.get(f"/jobs/{job['id']}/artifacts/model.json").json()
    assert description["model"]["arch"] == arch and description["classes"] == list(CLASSES)
    session = onnxruntime.InferenceSession(client.get(f"/jobs/{job['id']}/artifacts/model.onnx").content,
                                           providers=["CPUExecutionProvider"])
    contract = description["input"]
    assert contract["size"] == SIZE and contract["resize"] is None and contract["layout"] == "NCHW"
    low, high = contract["pixel_range"]
    pixels = np.stack([p for p, _ in images["test"]]).transpose(0, 3, 1, 2).astype(np.float32)
    x = (low + pixels / 255 * (high - low) - np.array(contract["mean"], np.float32)[:, None, None]) \
        / np.array(contract["std"], np.float32)[:, None, None]
    x = x.astype(np.float32)
    (logits,) = session.run(None, {"input": x})
    labels = np.array([label for _, label in images["test"]])
    accuracy = float((logits.argmax(1) == labels).mean())
    assert accuracy == pytest.approx(job["metrics"]["final"]["accuracy"], abs=1e-9)
    # the job started from the uploaded weights: the unpruned model scored what the user's own model scores
    with torch.no_grad():
        theirs = float((user_model(torch.from_numpy(x)).argmax(1).numpy() == labels).mean())
    assert theirs == pytest.approx(job["metrics"]["baseline"]["accuracy"], abs=1e-9)
    assert job["metrics"]["final"]["macs"] <= 0.5 * job["metrics"]["baseline"]["macs"]
