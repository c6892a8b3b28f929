"""Model zoo: every architecture the spec's ``model.arch`` names, built from (arch, classes, channels, width)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from .resnet import DEPTHS, CifarResNet
from .timm_models import ARCHS as TIMM_ARCHS
from .timm_models import build_timm
from .torchvision_models import ARCHS as TORCHVISION_ARCHS
from .torchvision_models import build_torchvision
from .vgg import CONFIGS, VGG

ARCHS = (*CONFIGS, *DEPTHS, *TORCHVISION_ARCHS, *TIMM_ARCHS)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an unpruned model; stored in ``model.json``."""

    arch: str
    num_classes: int
    in_channels: int
    width: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def built_by(arch: str) -> dict[str, str]:
    """The library that builds ``arch``, its name there and its version, for the model card: a rebuild with
    another version of torchvision or timm may not give the same layers."""
    if arch in TIMM_ARCHS:
        import timm

        return {"library": "timm", "name": arch.removeprefix("timm/"), "version": timm.__version__}
    if arch in TORCHVISION_ARCHS:
        import torchvision

        return {"library": "torchvision", "name": arch, "version": torchvision.__version__}
    from .. import __version__

    return {"library": "rlprune", "name": arch, "version": __version__}


def build_model(config: ModelConfig) -> nn.Module:
    if config.arch in CONFIGS:
        return VGG(CONFIGS[config.arch], config.num_classes, config.in_channels, config.width)
    if config.arch in DEPTHS:
        return CifarResNet(DEPTHS[config.arch], config.num_classes, config.in_channels, config.width)
    if config.arch in TORCHVISION_ARCHS:
        if config.width != 1.0:
            raise ValueError(f"{config.arch} is built at torchvision's own width; width must be 1.0")
        return build_torchvision(config.arch, config.num_classes, config.in_channels)
    if config.arch in TIMM_ARCHS:
        if config.width != 1.0:
            raise ValueError(f"{config.arch} is built at timm's own width; width must be 1.0")
        return build_timm(config.arch, config.num_classes, config.in_channels)
    raise ValueError(f"unknown architecture {config.arch!r}; choose one of {', '.join(ARCHS)}")
