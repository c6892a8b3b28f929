"""Keep-masks applied after BatchNorm, for one candidate or many evaluated in one batched forward pass.

A masked channel is exactly zero after its BatchNorm, so everything downstream sees what it would see if
the channel were removed: the masked model's logits equal the physically pruned model's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .structure import PrunableGroup


@contextmanager
def masked(model: nn.Module, groups: Sequence[PrunableGroup], masks: Sequence[Tensor]) -> Iterator[None]:
    """Apply ``masks[g]`` of shape (K, C_g) to group g while the context is open.

    The batch is read as K consecutive blocks, block k masked by row k; K = 1 masks the whole batch.
    """

    def hook_for(mask: Tensor):
        def hook(_module: nn.Module, _inputs: tuple, out: Tensor) -> Tensor:
            k = mask.shape[0]
            shaped = out.view(k, out.shape[0] // k, *out.shape[1:])
            weights = mask.to(out.dtype).view(k, 1, mask.shape[1], *([1] * (out.dim() - 2)))
            if torch.is_grad_enabled():
                return (shaped * weights).view(out.shape)
            shaped.mul_(weights)  # scoring only: no autograd graph to protect, so save an allocation
            return out

        return hook

    handles = []
    try:
        for group, mask in zip(groups, masks, strict=True):
            if mask.shape[-1] != group.size:
                raise ValueError(f"mask for {group.name} has {mask.shape[-1]} channels, the group has {group.size}")
            for norm in group.norms:
                handles.append(model.get_submodule(norm).register_forward_hook(hook_for(mask)))
        yield
    finally:
        for handle in handles:
            handle.remove()
