"""Every admitted architecture, torchvision's and timm's, pruned and exported as a job exports it: masked ==
removed, the cost model equals the real layers, and ONNX Runtime's logits of the pruned model agree with
PyTorch's. The 93 ONNX conversions take ten minutes of CPU on their own (each re-traces the program), so this
runs apart from the suite: `make test-architectures`, which CI runs after `make test` (the suite checks the
pruning of every torchvision model but the heavy ones, and one timm model per family)."""

import pytest
import torch

from rlprune_core.models import TIMM_ARCHS, TORCHVISION_ARCHS

from ..support.models import onnx_logits, pruned_exactly, relative_error, size_for

pytestmark = pytest.mark.every_architecture


@pytest.mark.parametrize("arch", [*TORCHVISION_ARCHS, *TIMM_ARCHS])
def test_every_admitted_architecture_prunes_exactly_and_exports_to_onnx(arch, tmp_path):
    pruned = pruned_exactly(arch)[0]
    size = size_for(arch)
    x = torch.randn(3, 3, size, size)  # another batch size than the export traced
    with torch.no_grad():
        reference = pruned(x)
    assert relative_error(onnx_logits(pruned, x, tmp_path), reference) < 1e-4
