"""The admitted torchvision and timm architectures over about 40 M parameters (or with a hundred and more groups)
hold the same invariants as the others (test_torchvision_models.py, test_timm_models.py): a file of their own,
so the suite's two processes share the exactness tests."""

import pytest

from rlprune_core.models import TIMM_ARCHS, TORCHVISION_ARCHS

from ..support.models import HEAVY, params, pruned_exactly


@pytest.mark.parametrize("arch", params([a for a in (*TORCHVISION_ARCHS, *TIMM_ARCHS) if a in HEAVY]))
def test_every_heavy_model_prunes_exactly(arch):
    pruned_exactly(arch)
