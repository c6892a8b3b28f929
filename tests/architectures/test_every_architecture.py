"""Every admitted architecture, torchvision's and timm's, pruned and exported as a job exports it: ONNX Runtime's
logits of the pruned model agree with PyTorch's, and for the heavy ones (over about 40 M parameters, or a
hundred and more groups) masked == removed and the cost model against the real layers, which the suite checks
for all the others (tests/core/test_torchvision_models.py, test_timm_models.py). The 93 ONNX conversions take
ten minutes of CPU on their own (each re-traces the program), so they run apart from the suite:
`make test-architectures`, which CI runs after `make test`."""

import pytest
import torch

from rlprune_core.models import TIMM_ARCHS, TORCHVISION_ARCHS

from ..support.models import HEAVY, onnx_logits, pruned_exactly, pruned_uniformly, relative_error, size_for

pytestmark = pytest.mark.every_architecture


@pytest.mark.parametrize("arch", [*TORCHVISION_ARCHS, *TIMM_ARCHS])
def test_every_admitted_architecture_exports_to_onnx_once_pruned(arch, tmp_path):
    pruned = pruned_exactly(arch)[0] if arch in HEAVY else pruned_uniformly(arch).pruned
    size = size_for(arch)
    x = torch.randn(3, 3, size, size)  # another batch size than the export traced
    with torch.no_grad():
        reference = pruned(x)
    assert relative_error(onnx_logits(pruned, x, tmp_path), reference) < 1e-4
