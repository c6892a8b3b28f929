"""Every admitted architecture, torchvision's and timm's, pruned and exported as a job exports it: ONNX Runtime's
logits of the pruned model agree with PyTorch's. The suite checks every one's pruning (masked == removed, the
cost model against the real layers) and a representative of each family's exports; these 93 ONNX exports take
ten minutes of CPU on their own (the conversion re-traces the program), so they run apart from the suite:
`make test-architectures`, which CI runs after `make test`."""

import pytest
import torch

from rlprune_core.models import TIMM_ARCHS, TORCHVISION_ARCHS

from ..support.models import onnx_logits, pruned_uniformly, relative_error

pytestmark = pytest.mark.every_architecture


@pytest.mark.parametrize("arch", [*TORCHVISION_ARCHS, *TIMM_ARCHS])
def test_every_admitted_architecture_exports_to_onnx_once_pruned(arch, tmp_path):
    pruning = pruned_uniformly(arch)
    pruned, size = pruning.pruned, pruning.size
    x = torch.randn(3, 3, size, size)  # another batch size than the export traced
    with torch.no_grad():
        reference = pruned(x)
    assert relative_error(onnx_logits(pruned, x, tmp_path), reference) < 1e-4
