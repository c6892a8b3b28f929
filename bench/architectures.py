"""Which torchvision and timm classification CNNs the structure layer prunes exactly, probed one by one.

For every CNN torchvision lists (the transformers left out: ViT, Swin, MaxViT), or the timm CNNs of
``TIMM_CANDIDATES`` with ``--source timm``, built with random weights and
BatchNorm statistics that look trained: find the prunable groups, keep the l1-largest half of the MACs with
uniform ratios, and compare the masked model's logits with the physically pruned model's on 64-pixel images.
The cost model's MACs and params are checked against a count of the pruned model's real layers. A model
passes when the logits agree within 1e-4 of their own scale (random weights under BatchNorm statistics drawn
at random blow deep ResNets' logits up to 1e7, where float32 rounding alone exceeds 1e-4) and the counts
exactly; otherwise every failure is recorded. With ``--onnx`` each model that passes is also exported as the
service exports it (``torch.export``, then ONNX) and run by ONNX Runtime, whose logits must agree with the
pruned model's within the same tolerance. Each model is probed in a process of its own, so one that hangs
(past PROBE_SECONDS) or crashes is recorded as such and the others still run.

    uv run python -m bench.architectures [--source timm] [--onnx] [--only resnet18 densenet121 ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlprune_core.architectures import image_size_for
from rlprune_core.cost import CostModel
from rlprune_core.masking import masked
from rlprune_core.metrics import count_macs, count_params
from rlprune_core.models.torchvision_models import build_torchvision
from rlprune_core.selection import Budget, select, uniform_counts
from rlprune_core.structure import find_groups
from rlprune_core.surgery import prune_model
from tests.support.models import looking_trained, one_hot_masks, onnx_logits, relative_error

from .common import RESULTS, environment, write_results

SIZE = 64
PROBE_SECONDS = 120
EXPORT_SECONDS = 600  # per model with --onnx: tracing the largest (RegNet-Y 128GF) takes minutes
TRANSFORMERS = ("vit_", "swin_", "maxvit_")
TOLERANCE = 1e-4


def cnn_names() -> list[str]:
    import torchvision

    return [n for n in torchvision.models.list_models(module=torchvision.models) if not n.startswith(TRANSFORMERS)]


# timm CNNs that practitioners commonly fine-tune, one or more per family (timm lists about a thousand models,
# most of them sizes and training recipes of the same few families).
TIMM_CANDIDATES = (
    "resnet18", "resnet26d", "resnet50", "resnet50d", "resnet101d", "seresnext26d_32x4d", "resnext50_32x4d",
    "wide_resnet50_2", "ecaresnet50d", "skresnet18", "res2net50_26w_4s", "resnest14d", "efficientnet_b0",
    "efficientnet_b3", "tf_efficientnet_b0", "efficientnetv2_rw_s", "tf_efficientnetv2_s", "mobilenetv2_100",
    "mobilenetv3_large_100", "mobilenetv3_small_100", "mobilenetv4_conv_small", "mnasnet_100", "fbnetc_100",
    "ghostnet_100", "rexnet_100", "regnetx_008", "regnety_008", "regnety_040", "cspresnet50", "cspdarknet53",
    "dla34", "densenet121", "dpn68", "hrnet_w18_small", "inception_v3", "xception41", "vgg16_bn", "repvgg_a2",
    "convnext_nano", "convnext_tiny", "lcnet_100", "tinynet_a", "mixnet_s", "resnetv2_50",
)


def trained_looking(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("timm/"):
        import timm

        return looking_trained(timm.create_model(name.removeprefix("timm/"), pretrained=False, num_classes=10))
    return looking_trained(build_torchvision(name, 10, 3))  # as a job builds it (GoogLeNet without aux heads)


def onnx_error(pruned: nn.Module, x: torch.Tensor) -> float:
    """The largest difference between ONNX Runtime's logits and the pruned model's, relative to their scale."""
    with tempfile.TemporaryDirectory() as folder:
        logits = onnx_logits(pruned, x, Path(folder))
    with torch.no_grad():
        reference = pruned(x)
    return relative_error(logits, reference)


def probe(name: str, onnx: bool = False) -> dict:
    began = time.perf_counter()
    model = trained_looking(name)
    row: dict = {"arch": name, "params_m": round(count_params(model) / 1e6, 2)}
    size = image_size_for(name, SIZE)
    example = torch.zeros(1, 3, size, size)
    try:
        groups = find_groups(model, example)
        row["groups"] = len(groups)
        if not groups:
            return {**row, "ok": False, "failure": "no prunable group"}
        cost = CostModel.from_model(model, groups, example)
        counts = uniform_counts(cost, Budget("macs", 0.5))
        kept = select(model, groups, counts, "l1", seed=0)
        x = torch.randn(2, 3, size, size)
        with torch.no_grad(), masked(model, groups, one_hot_masks(groups, kept)):
            expected = model(x)
        pruned = prune_model(model, groups, kept, example).eval()
        with torch.no_grad():
            error = relative_error(pruned(x), expected)
        row["relative_error"] = error
        macs_ok = cost.macs(np.array(counts)) == count_macs(pruned, (3, size, size))
        params_ok = cost.params(np.array(counts)) == count_params(pruned)
        failures = [f for f, bad in (("masked != removed", error > TOLERANCE), ("cost model's MACs", not macs_ok),
                                     ("cost model's params", not params_ok)) if bad]
        if onnx and not failures:
            row["onnx_error"] = onnx_error(pruned, x)
            failures += ["ONNX Runtime's logits"] if row["onnx_error"] > TOLERANCE else []
        row.update(ok=not failures, failure="; ".join(failures) or None)
    except Exception as exc:  # a probe: any failure of the structure layer is the finding
        row.update(ok=False, failure=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    row["seconds"] = round(time.perf_counter() - began, 1)
    return row


def probe_apart(name: str, onnx: bool) -> dict:
    """:func:`probe` in a fresh process: a hang or a crash is that model's finding, not the benchmark's end."""
    limit = EXPORT_SECONDS if onnx else PROBE_SECONDS
    try:
        command = [sys.executable, "-m", "bench.architectures", "--one", name, *(["--onnx"] if onnx else [])]
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"arch": name, "ok": False, "failure": f"no answer within {limit} s"}
    if done.returncode != 0:
        return {"arch": name, "ok": False, "failure": f"the probe exited with {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _error(value: float | None) -> str:
    return "" if value is None else f"{value:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="these architectures only (timm's as timm/<name>)")
    parser.add_argument("--source", choices=["torchvision", "timm"], default="torchvision")
    parser.add_argument("--onnx", action="store_true", help="also export each passing model to ONNX and run it")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # one probe, its row as JSON: what probe_apart runs
    args = parser.parse_args()
    if args.one:
        print(json.dumps(probe(args.one, args.onnx)))
        return
    names = cnn_names() if args.source == "torchvision" else [f"timm/{n}" for n in TIMM_CANDIDATES]
    stem = "architectures" if args.source == "torchvision" else "architectures-timm"
    # --only probes again and replaces those rows of the results written before
    earlier_path = RESULTS / f"{stem}.json"
    earlier = json.loads(earlier_path.read_text()) if args.only and earlier_path.exists() else {"rows": []}
    if earlier.get("onnx", args.onnx) != args.onnx:
        parser.error(f"the results were written {'with' if earlier['onnx'] else 'without'} --onnx; probe again "
                     "the same way")
    rows = {r["arch"]: r for r in earlier["rows"]}
    for name in args.only or names:
        rows[name] = probe_apart(name, args.onnx)
        print(rows[name], flush=True)
    rows = list(rows.values())
    passed = [r["arch"] for r in rows if r["ok"]]
    here = environment(torch.device("cpu"))
    # rows probed again keep the earlier run's environment for the rest, and say where they ran
    again = [*earlier.get("probed_again", []), {"names": args.only, "environment": here}] if args.only else []
    data = {"environment": earlier.get("environment", here), "probed_again": again, "image_size": SIZE,
            "tolerance": TOLERANCE,
            "onnx": args.onnx, "rows": rows, "passed": passed}
    lines = [f"| {r['arch']} | {r.get('params_m', '')} | {r.get('groups', '')} | {_error(r.get('relative_error'))} "
             f"| {_error(r.get('onnx_error'))} | {'exact' if r['ok'] else r['failure']} |" for r in rows]
    flags = ("" if args.source == "torchvision" else " --source timm") + (" --onnx" if args.onnx else "")
    onnx = ", and ONNX Runtime's logits of the exported pruned model against the pruned model's" if args.onnx else ""
    markdown = (f"# Which {args.source} CNNs prune exactly\n\n`uv run python -m bench.architectures{flags}`: "
                f"each CNN at {SIZE} pixels (or the smallest it takes), half its MACs kept by uniform l1; masked "
                f"logits against the physically pruned model's (tolerance {TOLERANCE}), the cost model against the "
                f"pruned layers{onnx}. "
                f"**{len(passed)} of {len(rows)} pass.**\n\n"
                "| architecture | params (M) | groups | relative error | ONNX error | result |\n"
                "|---|---|---|---|---|---|\n" + "\n".join(lines) + f"\n\nEnvironment: {data['environment']}.\n"
                + "".join(f"\nProbed again with `--only {' '.join(a['names'])}`: {a['environment']}.\n" for a in again))
    write_results(stem, data, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
