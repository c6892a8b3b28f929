"""Every admitted torchvision architecture holds the invariants of the built-in models, at a small image size on
CPU: masked == removed and the cost model equals the real modules; and how their channels are coupled."""

import pytest
import torch

from rlprune_core.models import TORCHVISION_ARCHS
from rlprune_core.structure import find_groups

from ..support.models import SIZE, params, pruned_exactly, trained_looking


@pytest.mark.parametrize("arch", params(TORCHVISION_ARCHS))
def test_every_admitted_torchvision_model_prunes_exactly(arch):
    pruned_exactly(arch)


def test_depthwise_and_squeeze_excitation_channels_go_together():
    groups = find_groups(trained_looking("mobilenet_v3_small", width=1.0), torch.zeros(1, 3, SIZE, SIZE))
    gated = next(g for g in groups if "features.4.block.2.fc1" in g.consumers)
    # the expansion conv, the depthwise conv and the excitation's last conv all produce these channels
    assert {"features.4.block.0.0", "features.4.block.1.0", "features.4.block.2.fc2"} <= set(gated.producers)
    assert {"features.4.block.0.1", "features.4.block.1.1"} <= set(gated.norms)


def test_grouped_convolutions_are_left_whole():
    model = trained_looking("regnet_x_400mf", width=1.0)
    groups = find_groups(model, torch.zeros(1, 3, SIZE, SIZE))
    grouped = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    assert grouped and not any(grouped & set(g.producers + g.consumers) for g in groups)
    assert len(groups) == 5  # the stem and the four stages' residual streams
