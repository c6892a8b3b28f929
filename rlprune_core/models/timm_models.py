"""timm (PyTorch Image Models) CNNs, named ``timm/<name>`` in a spec.

They are built by timm itself (``timm.create_model(..., pretrained=False)``: nothing is fetched from a model
hub; a user brings weights as a checkpoint upload), so the state-dict keys are timm's and a user's own
``model.state_dict()`` loads as it is. timm's own arguments give the data's class count (``num_classes``) and
image channels (``in_chans``). Only the names in :data:`rlprune_core.architectures.TimmArch` are admitted: each
was probed like torchvision's models, and timm's BatchNormAct2d (a BatchNorm with its activation inside) is
handled where channels are masked and statistics re-estimated (:mod:`rlprune_core.masking`).
"""

from __future__ import annotations

from typing import get_args

from torch import nn

from ..architectures import TimmArch

ARCHS: tuple[str, ...] = get_args(TimmArch)


def build_timm(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    import timm  # imported here, as torchvision is: a job on another architecture does not pay for it

    return timm.create_model(arch.removeprefix("timm/"), pretrained=False, num_classes=num_classes,
                             in_chans=in_channels)
