"""What every stage of a job reads and none changes, built once before the first stage runs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cost import CostModel
from .data import Dataset, load_dataset
from .device import resolve_device
from .errors import SpecError
from .export import example_input
from .locations import Locations
from .models import ModelConfig, build_model
from .spec import JobSpec
from .structure import PrunableGroup, find_groups


@dataclass(frozen=True)
class RunInputs:
    """The job's spec, device, data (on the device), the model's configuration, an example input, the
    model's prunable groups and the cost model that prices their channel counts."""

    spec: JobSpec
    device: torch.device
    data: Dataset
    config: ModelConfig
    example: torch.Tensor
    groups: tuple[PrunableGroup, ...]
    cost: CostModel

    @property
    def input_shape(self) -> tuple[int, int, int]:
        contract = self.data.contract
        return contract.channels, contract.size, contract.size

    @property
    def seed(self) -> int:
        return self.spec.seed


def build_inputs(spec: JobSpec, locations: Locations) -> RunInputs:
    """Load the data and read the model's structure.

    The structure (coupled groups, per-layer costs) depends on the architecture, not on weights, so it is
    read off a throwaway model built outside the job's random stream: the pretrained model drawn from the
    seed is the same as if the structure had been read after pretraining.
    """
    device = resolve_device(spec.device)
    torch.manual_seed(spec.seed)
    # Moved as a whole, so no reference to the host copy outlives the move.
    data = load_dataset(spec.dataset, spec.seed, locations).to(device)
    config = ModelConfig(spec.model.arch, data.num_classes, data.contract.channels, spec.model.width)
    example = example_input(data.contract)
    with torch.random.fork_rng(devices=[]):
        skeleton = build_model(config)
    groups = find_groups(skeleton, example)
    if not groups:
        raise SpecError(f"model.arch: {config.arch} has no channels that can be removed exactly, so it cannot be "
                        "pruned")
    return RunInputs(spec, device, data, config, example.to(device), tuple(groups),
                     CostModel.from_model(skeleton, groups, example))
