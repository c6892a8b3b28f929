"""The architectures a spec may name, and why torchvision's other CNNs are refused.

``CifarArch`` are the built-in CIFAR-style models (a width multiplier scales them); ``TorchvisionArch`` every
torchvision classification CNN that prunes exactly; ``TimmArch`` the timm (PyTorch Image Models) CNNs that do,
named ``timm/<name>``. torchvision's VGGs without BatchNorm share their names with the built-in VGGs (which
have it), so those names mean the built-in ones.
"""

from __future__ import annotations

import difflib
from typing import Literal, get_args

CifarArch = Literal["vgg11", "vgg13", "vgg16", "vgg19", "resnet20", "resnet56"]
# torchvision's classification CNNs that prune exactly (bench/results/architectures.md probes all of them;
# tests/core/test_torchvision_models.py holds each to every pruning invariant). The others are refused with
# the reason (REFUSED_ARCHS).
TorchvisionArch = Literal[
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "mnasnet0_5", "mnasnet0_75", "mnasnet1_0",
    "mnasnet1_3",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_s", "efficientnet_v2_m",
    "efficientnet_v2_l",
    "regnet_x_400mf", "regnet_x_800mf", "regnet_x_1_6gf", "regnet_x_3_2gf", "regnet_x_8gf", "regnet_x_16gf",
    "regnet_x_32gf", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf",
    "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf",
    "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "densenet121", "densenet161", "densenet169", "densenet201", "squeezenet1_0", "squeezenet1_1", "alexnet",
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large", "googlenet", "inception_v3",
]
# timm CNNs that practitioners fine-tune, each probed like torchvision's (bench/results/architectures-timm.md:
# masked == removed, the cost model against the pruned layers); a family representative is tested in the suite.
TimmArch = Literal[
    "timm/resnet18", "timm/resnet26d", "timm/resnet50", "timm/resnet50d", "timm/resnet101d",
    "timm/seresnext26d_32x4d", "timm/resnext50_32x4d", "timm/wide_resnet50_2", "timm/resnetv2_50",
    "timm/efficientnet_b0", "timm/efficientnet_b3", "timm/tf_efficientnet_b0", "timm/efficientnetv2_rw_s",
    "timm/tf_efficientnetv2_s", "timm/tinynet_a", "timm/mobilenetv2_100", "timm/mobilenetv3_large_100",
    "timm/mobilenetv3_small_100", "timm/mobilenetv4_conv_small", "timm/lcnet_100", "timm/mnasnet_100",
    "timm/fbnetc_100", "timm/regnetx_008", "timm/regnety_008", "timm/regnety_040", "timm/hrnet_w18_small",
    "timm/xception41", "timm/vgg16_bn", "timm/repvgg_a2", "timm/densenet121", "timm/dla34",
    "timm/convnext_nano", "timm/convnext_tiny",
]
# Architectures a library builds at its own width (a width multiplier applies to the built-in ones only).
LibraryArch = Literal[TorchvisionArch, TimmArch]
Arch = Literal[CifarArch, LibraryArch]
# The latency table times each layer by one input and one output count on a channels-first map. Where a layer
# reads several groups' channels side by side (a concatenation), or a linear runs on every pixel of a
# channels-last map (ConvNeXt), it cannot: these take MACs and params budgets only.
CONCATENATING = frozenset(("densenet121", "densenet161", "densenet169", "densenet201", "squeezenet1_0",
                           "squeezenet1_1", "googlenet", "inception_v3", "timm/densenet121", "timm/dla34"))
# The budget metrics some architectures refuse, each architecture with the reason: the spec reads this table
# instead of branching on a metric.
METRIC_REFUSALS: dict[str, dict[str, str]] = {"latency": {
    **dict.fromkeys(CONCATENATING, "its layers read concatenated channels, which the latency table cannot price"),
    **dict.fromkeys(("convnext_tiny", "convnext_small", "convnext_base", "convnext_large", "timm/convnext_tiny"),
                    "its linear layers run on every pixel of a channels-last map, which the latency table cannot "
                    "price"),
}}
# The smallest image an architecture's downsampling leaves a pixel of (the spec's floor is 32 otherwise).
MIN_IMAGE_SIZES = {"alexnet": 63, "inception_v3": 75}


def image_size_for(arch: str, preferred: int) -> int:
    """``preferred`` pixels a side, or the smallest image ``arch`` takes where that is more."""
    return max(preferred, MIN_IMAGE_SIZES.get(arch, 0))


# Classifiers that only training runs (GoogLeNet's and Inception v3's auxiliary heads): these models are built
# without them, and a user's checkpoint that has them loads without them (state-dict prefixes).
AUXILIARY_HEADS = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}
REFUSED_ARCHS = {
    **dict.fromkeys(("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"),
                    "shuffles channels between branches, which the structure layer cannot follow"),
}


def architecture_refusal(arch: str) -> str | None:
    """Why ``arch`` cannot be used (None when it can): the reason for a refused torchvision CNN, the closest
    known name for an unknown one."""
    known = get_args(CifarArch) + get_args(LibraryArch)
    if arch in known:
        return None
    if arch in REFUSED_ARCHS:
        return f"{arch} cannot be pruned exactly: it {REFUSED_ARCHS[arch]}"
    if arch.startswith("timm/"):
        close = difflib.get_close_matches(arch, get_args(TimmArch), n=1)
        return (f"{arch[:100]!r} is not among the timm models rlprune prunes exactly"
                + (f"; did you mean {close[0]!r}?" if close else "") + " (they are listed in docs/api.md)")
    close = difflib.get_close_matches(arch, known, n=1)
    return (f"unknown architecture {arch[:100]!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            + " (the supported ones are listed in docs/api.md)")
