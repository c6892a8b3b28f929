"""The admitted torchvision architectures over about 40 M parameters hold the same invariants as the others
(test_torchvision_models.py): a file of their own, so the suite's two processes share the exactness tests."""

import pytest

from rlprune_core.models import TORCHVISION_ARCHS

from ..support.models import HEAVY, params, pruned_exactly


@pytest.mark.parametrize("arch", params([a for a in TORCHVISION_ARCHS if a in HEAVY]))
def test_every_heavy_torchvision_model_prunes_exactly(arch):
    pruned_exactly(arch)
