"""Per-session LoRA on frozen convolutions (Conv1d / Conv2d): the conv counterpart of ``LoRALinear``.

A convolution with kernel W0 (out, in, *k) is a linear map of each input patch: with the patch
flattened to ``in * prod(k)`` values (channel-major, the order of ``W0.reshape(out, -1)`` and of
``F.unfold``), ``y[:, p] = W0.reshape(out, -1) @ patch_p + bias``. A LoRA stack is therefore exactly
a LoRALinear stack on the patches: ``A_s`` (r x in*prod(k)) and ``B_s`` (out x r), and

  W = W0 + sum_s scale_s * (B_s @ A_s).reshape(W0.shape)

applied as a conv. The newest stack runs as two convolutions, ``A_s`` viewed as a rank-r conv with
W0's kernel size, stride, padding and dilation, then ``B_s`` as a 1x1 conv (r -> out); the others are
folded into one kernel. ``LoRAConv`` subclasses ``LoRALinear`` and only swaps the operator (the
``_base_map``/``_low_rank`` hooks) and the patch view of the input, so per-session stacks, the
subtracted ("unlearned") mode, folding, merging, state dicts, ``LoRAManager`` (which picks this
wrapper for Conv1d/Conv2d targets) and ``GradientProjector`` (which constrains the rows of A, now in
patch space) work unchanged. B starts at zero, so a new stack leaves the conv's outputs as they were.

Projection. The input a LoRA stack sees is the patch, so the covariance the projector needs is that of
the patches: ``watch_input_grams`` hands ``P^T P`` and the row count for every forward, and
``pace.peft.projection.collect_input_covariances`` sums them, so the projector's guarantee holds as for
linear layers: if every row of A is orthogonal to span(U), the stack adds nothing on any input whose
patches lie in span(U). A stride-1, undilated Conv1d (CREPE's blocks 2-6) gets the Gram from lagged
channel products without unfolding (``conv1d_patch_gram``; ~8-15x faster on CREPE tiny's block 2,
``bench/patch_gram.py``); other convs unfold their patches in chunks of at most ``patch_chunk_bytes``
(``watch_inputs`` hands the same chunks to any other consumer).
Cost: the covariance is (in*prod(k))^2 per layer; for CREPE tiny the patch widths are 512, 8192, 1024,
1024, 1024, 2048, and block 2's 8192 costs ~0.5 GB in float64 and an 8192 x 8192 eigendecomposition
(one to three minutes of one CPU core) per projected session; for CREPE full they reach 65536 (block
2, infeasible) and 16384.

Only ``groups == 1`` and zero padding (numeric padding or ``"valid"``) are supported.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from pace.peft.lora import LoRALinear, register_wrapper


class LoRAConv(LoRALinear):
    """A frozen ``nn.Conv1d``/``nn.Conv2d`` plus per-session low-rank updates (module docstring)."""

    base_types = (nn.Conv1d, nn.Conv2d)
    #: largest block of unfolded patches handed to a ``watch_inputs`` callback at once
    patch_chunk_bytes = 64 * 2**20

    def __init__(self, base: nn.Conv1d | nn.Conv2d):
        super().__init__(base)
        if base.groups != 1:
            raise ValueError(f"LoRAConv supports groups=1 only, got groups={base.groups}")
        if base.padding_mode != "zeros":
            raise ValueError(f"LoRAConv supports zero padding only, got padding_mode={base.padding_mode!r}")
        if isinstance(base.padding, str) and base.padding != "valid":
            raise ValueError(f"LoRAConv needs numeric padding (or 'valid'), got {base.padding!r}")
        self._conv = F.conv1d if isinstance(base, nn.Conv1d) else F.conv2d

    # ---- structure ---------------------------------------------------------------------------

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(self.base.kernel_size)

    @property
    def in_features(self) -> int:
        """Width of one input patch: in_channels * prod(kernel_size)."""
        return self.base.in_channels * math.prod(self.kernel_size)

    @property
    def out_features(self) -> int:
        return self.base.out_channels

    def _padding(self) -> tuple[int, ...]:
        p = self.base.padding
        return (0,) * len(self.kernel_size) if p == "valid" else tuple(p)

    # ---- operator hooks (see LoRALinear.forward) ---------------------------------------------

    def _base_map(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        b = self.base
        return self._conv(x, weight.reshape(b.weight.shape), b.bias, b.stride, self._padding(), b.dilation)

    def _low_rank(self, x: torch.Tensor, s: int) -> torch.Tensor:
        b = self.base
        a, bb = self.lora_A[s], self.lora_B[s]
        h = self._conv(x, a.reshape(a.shape[0], b.in_channels, *self.kernel_size), None, b.stride,
                       self._padding(), b.dilation)
        return self._conv(h, bb.reshape(*bb.shape, *(1,) * len(self.kernel_size)))

    # ---- inputs as patches -------------------------------------------------------------------

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, *spatial) -> (N * positions, in_features): every input patch, one row each."""
        b = self.base
        if isinstance(b, nn.Conv1d):
            cols = F.unfold(x[:, :, None, :], (1, *self.kernel_size), dilation=(1, *b.dilation),
                            padding=(0, *self._padding()), stride=(1, *b.stride))
        else:
            cols = F.unfold(x, self.kernel_size, dilation=b.dilation, padding=self._padding(), stride=b.stride)
        return cols.transpose(1, 2).reshape(-1, self.in_features)  # (N, C*k, P) -> (N*P, C*k)

    def watch_inputs(self, fn: Callable[[torch.Tensor], None]) -> RemovableHandle:
        """Call ``fn(patches)`` on every forward with this conv's unfolded input patches
        ``(rows, in_features)``, a few samples at a time (at most ``patch_chunk_bytes`` per call)."""

        def hook(_module, args):
            x = args[0]
            per_sample = max(1, self.patches(x[:1]).numel() * x.element_size())
            step = max(1, self.patch_chunk_bytes // per_sample)
            for i in range(0, x.shape[0], step):
                fn(self.patches(x[i:i + step]))

        return self.register_forward_pre_hook(hook)

    def watch_input_grams(self, fn: Callable[[torch.Tensor, int], None]) -> RemovableHandle:
        """Call ``fn(P^T P, n)`` on every forward, ``P`` the ``n`` unfolded input patches. A Conv1d
        with stride 1 and dilation 1 (CREPE's blocks 2-6) gets it from lagged channel products
        (``conv1d_patch_gram``) without unfolding; other convs unfold in chunks."""
        b = self.base
        if not (isinstance(b, nn.Conv1d) and b.stride == (1,) and b.dilation == (1,)):
            return super().watch_input_grams(fn)

        def hook(_module, args):
            x = F.pad(args[0].detach().to(torch.float64), self._padding() * 2)
            if x.shape[-1] >= b.kernel_size[0]:
                fn(conv1d_patch_gram(x, b.kernel_size[0]), x.shape[0] * (x.shape[-1] - b.kernel_size[0] + 1))

        return self.register_forward_pre_hook(hook)

    def extra_repr(self) -> str:
        return (f"{type(self.base).__name__}(in={self.base.in_channels}, out={self.out_features}, "
                f"kernel={self.kernel_size}), patch={self.in_features}, sessions={self.num_sessions}, "
                f"ranks={self.ranks}, mode={self.mode}, merged={self.merged}")


def conv1d_patch_gram(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """``P^T P`` for the patches ``P`` (rows: every sample and position; columns: channel-major, as
    ``F.unfold``) of a stride-1, undilated Conv1d of width ``kernel`` over ``x`` (N, C, L), already padded.

    Entry ((c1, k1), (c2, k2)) is ``sum_{n, t < T} x[n, c1, t + k1] x[n, c2, t + k2]`` with
    ``T = L - kernel + 1`` positions: for lag ``d = k2 - k1`` a sum of the products
    ``x[:, :, u] x[:, :, u + d]^T`` over the window ``u in [k1, k1 + T)``. The window for ``k1 = 0``
    is one matmul; each next ``k1`` drops the product at ``u = k1`` and adds the one at ``k1 + T``
    (a cumulative sum over the kernel's edges). Cost ``C^2 (kernel T + kernel^2) N`` against
    ``C^2 kernel^2 T N`` for the unfolded Gram: ~40x less for CREPE tiny's block 2.
    """
    n, c, length = x.shape
    t = length - kernel + 1
    gram = x.new_zeros(c, kernel, c, kernel)
    for d in range(kernel):
        a, b = x[:, :, : length - d], x[:, :, d:]  # b[..., u] = x[..., u + d]
        first = torch.einsum("ncu,neu->ce", a[:, :, :t], b[:, :, :t])
        steps = kernel - d - 1  # k1 runs over 0 .. kernel - d - 1
        windows = first[None]
        if steps:
            leave = torch.einsum("ncu,neu->uce", a[:, :, :steps], b[:, :, :steps])
            enter = torch.einsum("ncu,neu->uce", a[:, :, t : t + steps], b[:, :, t : t + steps])
            windows = torch.cat([windows, first + torch.cumsum(enter - leave, 0)])
        k1 = torch.arange(steps + 1, device=x.device)
        gram[:, k1, :, k1 + d] = windows
        if d:
            gram[:, k1 + d, :, k1] = windows.transpose(1, 2)
    return gram.reshape(c * kernel, c * kernel)


register_wrapper(nn.Conv1d, LoRAConv)
register_wrapper(nn.Conv2d, LoRAConv)
