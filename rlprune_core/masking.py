"""Keep-masks applied after BatchNorm (or a producing conv where no BatchNorm follows), for one candidate or
many evaluated in one batched forward pass.

A masked channel is exactly zero at each of its group's mask sites (structure.PrunableGroup.mask_sites), so
everything downstream sees what it would see if the channel were removed: the masked model's logits equal the
physically pruned model's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .structure import PrunableGroup, channel_dim


@contextmanager
def masked(model: nn.Module, groups: Sequence[PrunableGroup], masks: Sequence[Tensor]) -> Iterator[None]:
    """Apply ``masks[g]`` of shape (K, C_g) to group g while the context is open.

    The batch is read as K consecutive blocks, block k masked by row k; K = 1 masks the whole batch.
    """

    def hook_for(mask: Tensor, offset: int):
        def hook(module: nn.Module, _inputs: tuple, out: Tensor) -> Tensor:
            k, size = mask.shape
            shaped = out.view(k, out.shape[0] // k, *out.shape[1:])
            dim = channel_dim(module) % out.dim() + 1  # the channel axis of ``shaped``
            ones = [1] * (shaped.dim() - 1)
            weights = mask.to(out.dtype).view(k, *ones[:dim - 1], size, *ones[dim:])
            if torch.is_grad_enabled():
                if size != shaped.shape[dim]:  # the group holds a slice of these channels (a concatenation)
                    full = torch.ones(k, *ones[:dim - 1], shaped.shape[dim], *ones[dim:], dtype=out.dtype,
                                      device=out.device)
                    weights = full.index_copy(dim, torch.arange(offset, offset + size, device=out.device), weights)
                return (shaped * weights).view(out.shape)
            # scoring only: no autograd graph to protect, so save an allocation
            shaped.narrow(dim, offset, size).mul_(weights)
            return out

        return hook

    handles = []
    try:
        for group, mask in zip(groups, masks, strict=True):
            if mask.shape[-1] != group.size:
                raise ValueError(f"mask for {group.name} has {mask.shape[-1]} channels, the group has {group.size}")
            for site, offset in group.mask_sites:
                handles.append(model.get_submodule(site).register_forward_hook(hook_for(mask, offset)))
        yield
    finally:
        for handle in handles:
            handle.remove()


class CandidateBatchNorm:
    """Every BatchNorm normalises each of K candidate blocks with statistics of that candidate's own.

    Removing channels shifts what later layers see, so the pretrained running statistics go stale; a
    candidate scored with them can look far worse than it is after a little training. ``collect()``
    runs a batch of calibration images per candidate and records per-candidate means and variances;
    ``apply()`` then normalises the evaluation images with them. Both are single batched passes, so
    re-calibration costs one extra pass over the calibration images, not one pass per candidate.
    Enter this context before :func:`masked`, so the statistics are taken before each mask applies.
    """

    def __init__(self, model: nn.Module, k: int):
        self.model = model
        self.k = k
        self.stats: dict[str, tuple[Tensor, Tensor]] = {}  # per BatchNorm: (K, C) scale and shift
        self.collecting = True

    def _hook(self, name: str):
        def hook(module: nn.BatchNorm2d, inputs: tuple, _out: Tensor) -> Tensor:
            x = inputs[0]
            # (K, images, C, positions): one reduction over images and positions per candidate and channel
            shaped = x.reshape(self.k, x.shape[0] // self.k, x.shape[1], -1)
            if self.collecting:
                count = shaped.shape[1] * shaped.shape[3]
                mean = shaped.sum(dim=(1, 3)) / count
                # unbiased, as running_var would hold it; sum of squares is 2x faster than Tensor.var here
                var = ((shaped * shaped).sum(dim=(1, 3)) - count * mean * mean) / (count - 1)
                scale = torch.rsqrt(var.clamp_min(0) + module.eps) * module.weight
                self.stats[name] = (scale, module.bias - mean * scale)
            scale, shift = self.stats[name]
            out = torch.addcmul(shift[:, None, :, None], shaped, scale[:, None, :, None]).view(x.shape)
            # timm's BatchNormAct2d applies its dropout and activation after the affine, inside the module
            for after in (getattr(module, "drop", None), getattr(module, "act", None)):
                if isinstance(after, nn.Module):
                    out = after(out)
            return out

        return hook

    @contextmanager
    def collect(self) -> Iterator[None]:
        self.collecting = True
        with self._hooks():
            yield

    @contextmanager
    def apply(self) -> Iterator[None]:
        self.collecting = False
        with self._hooks():
            yield

    @contextmanager
    def _hooks(self) -> Iterator[None]:
        handles = [module.register_forward_hook(self._hook(name)) for name, module in self.model.named_modules()
                   if isinstance(module, nn.BatchNorm2d)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
