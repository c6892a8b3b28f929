"""Every admitted torchvision architecture holds the invariants of the built-in models, at a small image size on
CPU: masked == removed and the cost model equals the real modules (the heavy ones, too slow for the suite, in
tests/architectures, which CI runs); and how their channels are coupled."""

import pytest
import torch

from rlprune_core.models import TORCHVISION_ARCHS
from rlprune_core.structure import find_groups

from ..support.models import HEAVY, SIZE, pruned_exactly, trained_looking


@pytest.mark.parametrize("arch", [a for a in TORCHVISION_ARCHS if a not in HEAVY])
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


def test_convnext_prunes_the_hidden_units_of_its_mlps_and_leaves_the_residual_stream_whole():
    """Its LayerNorms normalise across channels, so only the MLPs' hidden units (each block's first linear,
    read by its second, with GELU between) have an exact masked equivalent."""
    model = trained_looking("convnext_tiny", width=1.0)
    groups = find_groups(model, torch.zeros(1, 3, SIZE, SIZE))
    assert len(groups) == 3 + 3 + 9 + 3  # one per block
    for group in groups:
        assert group.name.endswith("block.3") and group.consumers == (group.name[:-1] + "5",)
        assert not group.norms and group.mask_sites == ((group.name, 0),)


def test_a_densenet_layer_s_channels_are_masked_at_their_offset_in_every_later_concatenation():
    groups = find_groups(trained_looking("densenet121", width=1.0), torch.zeros(1, 3, SIZE, SIZE))
    first = next(g for g in groups if g.name == "features.denseblock1.denselayer1.conv2")
    # the block's input (64 channels) comes first in every later layer's concatenated input, then this layer's 32
    later = [f"features.denseblock1.denselayer{i}.norm1" for i in range(2, 7)] + ["features.transition1.norm"]
    assert dict(zip(first.norms, first.norm_offsets, strict=True)) == dict.fromkeys(later, 64)
    assert set(first.consumer_reads) == {32} and first.size == 32
