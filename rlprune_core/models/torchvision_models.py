"""torchvision classification models as first-class architectures.

They are built by torchvision itself (``torchvision.models.get_model``, never with downloaded weights), so
their state-dict keys are torchvision's and a user's own ``model.state_dict()`` loads as it is. Two
things differ from the published definition, both forced by the data: the classifier has the data's
class count, and a stem for images of other than three channels takes that many. And GoogLeNet and
Inception v3 are built without their auxiliary classifiers (training-only heads; a checkpoint's copies of
them are ignored when it loads) and, as torchvision builds them without weights, with ``transform_input``
off.

Each name listed here is covered by tests of every invariant the built-in models hold (masked == removed,
the cost model against the real modules, export round trips). Coupled channels come from Torch-Pruning's
dependency graph: residual sums, depthwise convolutions and squeeze-excitation gates are pruned together
with the channels they read; grouped convolutions that are not depthwise (RegNet's) are left whole, see
:mod:`rlprune_core.structure`.
"""

from __future__ import annotations

from typing import get_args

from torch import nn

from ..architectures import AUXILIARY_HEADS, TorchvisionArch

ARCHS: tuple[str, ...] = get_args(TorchvisionArch)


def _replace_stem(model: nn.Module, in_channels: int) -> None:
    """Swap the first convolution for one that reads ``in_channels`` image channels (e.g. 1 for digits)."""
    name, stem = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, nn.Conv2d(
        in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, stem.dilation,
        stem.groups, stem.bias is not None,
    ))


def build_torchvision(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    # Imported here: torchvision's import pulls in torch._dynamo (about 6 s of CPU), which a job on a
    # built-in architecture, and every worker process that starts, would otherwise pay.
    import torchvision

    # without the auxiliary heads, which only training runs and the structure layer cannot price: a pruned
    # network is finetuned on its main classifier alone
    options = {"aux_logits": False, "init_weights": True} if arch in AUXILIARY_HEADS else {}
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **options)
    if in_channels != 3:
        _replace_stem(model, in_channels)
    return model
