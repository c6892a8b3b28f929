"""timm CNNs: a representative of each admitted family holds the pruning invariants (every admitted one is
checked with its ONNX export in tests/architectures, which CI runs), a user's timm state dict loads as it is,
and timm's BatchNormAct2d (a BatchNorm with its activation inside) keeps its activation when the search
re-estimates its statistics."""

import pytest
import torch
from torch import nn

from rlprune_core.architectures import architecture_refusal
from rlprune_core.checkpoint import load_weights
from rlprune_core.masking import CandidateBatchNorm
from rlprune_core.models import TIMM_ARCHS, ModelConfig, build_model
from rlprune_core.spec import JobSpec

from ..support.models import TIMM_REPRESENTATIVES, params, pruned_exactly, trained_looking


@pytest.mark.parametrize("arch", params(TIMM_REPRESENTATIVES))
def test_a_representative_of_each_timm_family_prunes_exactly(arch):
    assert arch in TIMM_ARCHS
    pruned_exactly(arch)


def test_a_timm_state_dict_loads_as_it_is(tmp_path):
    import timm
    from safetensors.torch import save_file

    theirs = timm.create_model("resnet18", pretrained=False, num_classes=5)
    save_file(theirs.state_dict(), tmp_path / "user.safetensors")
    ours = build_model(ModelConfig("timm/resnet18", num_classes=5, in_channels=3))
    load_weights(ours, tmp_path / "user.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(),
                                                  strict=True))


def test_re_estimated_statistics_keep_the_activation_inside_timm_s_batchnorm():
    """With statistics collected on the images it normalises, the candidate pass equals the model in training
    mode (which normalises by the batch's own statistics), activations included."""
    model = trained_looking("timm/efficientnet_b0", width=1.0)
    assert any(type(m).__name__ == "BatchNormAct2d" for m in model.modules())
    x = torch.randn(128, 3, 64, 64)
    norms = CandidateBatchNorm(model, 1)
    with torch.no_grad():
        with norms.collect():
            model(x)
        with norms.apply():
            candidate = model(x)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.train()  # batch statistics, as the candidate pass used (biased variance aside)
        batch = model(x)
    model.eval()
    # without the activation the two differ by the logits' own scale; with it, by the variance's n / (n - 1)
    assert (candidate - batch).abs().max() < 2e-3 * max(1.0, float(batch.abs().max()))


def test_the_model_card_names_the_library_that_built_the_model():
    import timm
    import torchvision

    from rlprune_core import __version__
    from rlprune_core.models import built_by

    assert built_by("timm/resnet50d") == {"library": "timm", "name": "resnet50d", "version": timm.__version__}
    assert built_by("resnet18") == {"library": "torchvision", "name": "resnet18", "version": torchvision.__version__}
    assert built_by("vgg11") == {"library": "rlprune", "name": "vgg11", "version": __version__}


def test_timm_names_are_checked_and_built_at_timm_s_width():
    assert JobSpec.model_validate({"model": {"arch": "timm/resnet50d"}}).dataset.image_size == 224
    assert "did you mean 'timm/resnet26d'" in architecture_refusal("timm/resnet26e")
    assert "not among the timm models" in architecture_refusal("timm/vit_base_patch16_224")
    with pytest.raises(ValueError, match="timm's own width"):
        JobSpec.model_validate({"model": {"arch": "timm/resnet18", "width": 0.5}})
