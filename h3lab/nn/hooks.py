"""Named hook points: identity modules that mark activations probes and findings refer to.

Like TransformerLens' ``HookPoint``: a layer passes an activation through ``self.hook_x(t)``;
with no hook registered this is the identity, and a forward hook registered on the module (by
name, e.g. ``blocks.1.mixer.hook_kernel``) can read or replace the activation. Hook names are
module paths, so they stay stable as long as the module tree does.
"""

from __future__ import annotations

from torch import Tensor, nn


class HookPoint(nn.Module):
    """Identity. ``forward(x)`` returns ``x``; forward hooks on this module see (and may
    replace) the activation."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    @property
    def active(self) -> bool:
        """Whether any forward hook is registered — layers use it to compute activations
        that are otherwise skipped (e.g. the attention pattern, which SDPA never forms)."""
        return bool(self._forward_hooks)
