"""The model zoo: every architecture builds, counts its MACs and params, and takes the data's shapes."""

import json

import pytest
import torch

from rlprune_core.checkpoint import load_checkpoint
from rlprune_core.metrics import count_macs, count_params
from rlprune_core.models import ARCHS, TIMM_ARCHS, TORCHVISION_ARCHS, ModelConfig, build_model

from ..support.models import TIMM_REPRESENTATIVES, TORCHVISION_REPRESENTATIVES, size_for


def test_vgg16_has_the_published_size():
    model = build_model(ModelConfig("vgg16", num_classes=10, in_channels=3))
    assert round(count_params(model) / 1e6, 1) == 14.7
    assert round(count_macs(model, (3, 32, 32)) / 1e6) == 313


# The library models' stems are rebuilt for other image channels by one code path per library (timm's
# ``in_chans``, our _replace_stem for torchvision), so family representatives stand for the rest here: every
# admitted model is built again by the exactness tests, and building them all twice costs a minute.
@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in TIMM_ARCHS + TORCHVISION_ARCHS]
                         + TORCHVISION_REPRESENTATIVES + TIMM_REPRESENTATIVES)
def test_every_arch_classifies_any_channel_count(arch):
    width = 1.0 if arch in TORCHVISION_ARCHS + TIMM_ARCHS else 0.25  # theirs come at their library's own width
    model = build_model(ModelConfig(arch, num_classes=7, in_channels=1, width=width)).eval()
    size = size_for(arch)
    assert model(torch.zeros(2, 1, size, size)).shape == (2, 7)


def test_width_scales_channels():
    narrow = build_model(ModelConfig("vgg11", 10, 3, width=0.5))
    wide = build_model(ModelConfig("vgg11", 10, 3, width=1.0))
    assert narrow.features[0].out_channels * 2 == wide.features[0].out_channels == 64


def test_resnet_depths():
    convs = lambda m: sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())  # noqa: E731
    # 1 stem + 2 per block + 2 projection shortcuts
    assert convs(build_model(ModelConfig("resnet20", 10, 3))) == 1 + 2 * 9 + 2
    assert convs(build_model(ModelConfig("resnet56", 10, 3))) == 1 + 2 * 27 + 2


def test_torchvision_models_keep_torchvision_state_names():
    import torchvision

    ours = build_model(ModelConfig("resnet18", num_classes=10, in_channels=3)).state_dict()
    theirs = torchvision.models.resnet18(num_classes=10).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize(("arch", "heads"), [("googlenet", "aux1."), ("inception_v3", "AuxLogits.")])
def test_a_checkpoint_with_auxiliary_classifiers_loads_into_the_model_built_without_them(arch, heads, tmp_path):
    """torchvision trains GoogLeNet and Inception v3 with auxiliary heads that inference never runs: a user's
    state dict has them, ours is built without them, and everything else loads as it is."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    theirs = torchvision.models.get_model(arch, weights=None, num_classes=10, aux_logits=True, init_weights=True)
    state = theirs.state_dict()
    assert any(name.startswith(heads) for name in state)
    save_file(state, tmp_path / "theirs.safetensors")
    config = ModelConfig(arch, num_classes=10, in_channels=3)
    ours = build_model(config)
    assert load_checkpoint(ours, tmp_path / "theirs.safetensors", config, torch.device("cpu")) == []
    x = torch.randn(2, 3, size_for(arch), size_for(arch))
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), theirs.eval()(x))


def test_torchvision_models_take_no_width():
    with pytest.raises(ValueError, match=r"width must be 1\.0"):
        build_model(ModelConfig("mobilenet_v2", num_classes=10, in_channels=3, width=0.5))


def test_the_size_table_knows_every_architecture_and_matches_a_measurement():
    """The torch-free API sizes a job from rlprune_core/models/sizes.json; a stale row would misjudge memory.
    Measuring every architecture takes a minute, so a few stand for the rest (``python -m
    rlprune_core.models.sizes`` rewrites the table)."""
    from rlprune_core.models.sizes import TABLE, measure

    table = json.loads(TABLE.read_text())
    assert set(table) == set(ARCHS)
    for arch in ("vgg11", "resnet20", "mobilenet_v2", "googlenet", "inception_v3", "timm/resnet18"):
        assert measure(arch) == table[arch]
