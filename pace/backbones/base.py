"""The backbone contract every method relies on.

A backbone is an ``nn.Module`` that takes a batch of frontend outputs (its ``frontend`` says which)
and returns a pooled utterance embedding plus, on request, the per-block hidden states. It names the
linear layers PEFT may wrap, per block and role, so LoRA and gradient projection never depend on a
particular model's attribute names.

Roles: ``q``, ``k``, ``v`` (or fused ``qkv``), ``o`` (attention output), ``fc1``, ``fc2`` (MLP).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

from pace.data.frontend import Frontend


@dataclass
class BackboneOutput:
    pooled: torch.Tensor  # (B, D): the utterance embedding (CLS or mean over tokens)
    hidden_states: list[torch.Tensor] = field(default_factory=list)  # per block, (B, N, D)
    #: forward_prompted only: final states of the prepended prompt tokens, (B, P, D)
    prompt_tokens: torch.Tensor | None = None


class Backbone(nn.Module, ABC):
    #: registry name, e.g. ``eat-base``; set by the builder
    name: str = "backbone"
    #: where the weights came from (file path, package, "random init"); part of the cache identity
    weights_source: str = "random init"

    def __init__(self, frontend: Frontend, embed_dim: int, num_blocks: int, pooling: str = "cls"):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.frontend = frontend
        self.embed_dim = embed_dim
        self.num_blocks = num_blocks
        self.pooling = pooling

    @abstractmethod
    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        """x: a batch of frontend outputs, (B, *frontend.shape)."""

    @abstractmethod
    def linear_layers(self) -> dict[int, dict[str, str]]:
        """{block index: {role: qualified module name of an nn.Linear}} for PEFT targeting."""

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """Pool one block's tokens (B, N, D) -> (B, D) the same way as the utterance embedding.

        Backbones whose first token is a CLS token override ``has_cls`` to True.
        """
        if h.dim() == 2:
            return h
        if self.has_cls:
            return h[:, 0] if self.pooling == "cls" else h[:, 1:].mean(dim=1)
        return h.mean(dim=1)

    has_cls: bool = False

    #: whether forward_prompted works (prompt and prefix tuning, pace.backbones.prompting)
    supports_prompts: bool = False

    #: whether its blocks' LoRA targets are nn.Linear layers (attention/MLP); a CNN's are convolutions,
    #: which methods with linear-only adapters (Learner.LINEAR_LAYERS_ONLY) refuse
    linear_blocks: bool = True

    def prompt_block(self, b: int) -> nn.Module:
        """The module of block b (prompt tokens are prepended to its input)."""
        raise NotImplementedError

    def prompt_attention(self, b: int):
        """Block b's self-attention as a ``pace.backbones.prompting.AttentionSite`` (for prefix tuning)."""
        raise NotImplementedError

    def final_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The final token states (B, N, D) that ``pool`` turns into ``forward(x).pooled``."""
        raise NotImplementedError

    def forward_prompted(self, x: torch.Tensor, prompts) -> BackboneOutput:
        """Forward with ``prompts`` (a ``pace.backbones.prompting.Prompts``) injected; the backbone's weights are
        used, never changed. ``pooled`` pools the input's own tokens (prompt tokens stripped) exactly as
        ``forward`` does; ``prompt_tokens`` are the prompt tokens' final states. No hidden states."""
        from pace.backbones.prompting import prompt_hooks

        if not self.supports_prompts:
            raise ValueError(f"backbone {self.name!r} does not support prompt or prefix tuning")
        prompts.check(self.num_blocks, self.embed_dim, x.shape[0])
        n = prompts.num_tokens
        with prompt_hooks(self, prompts):
            h = self.final_tokens(x)
        return BackboneOutput(pooled=self.pool(h[:, n:]), prompt_tokens=h[:, :n])

    def lora_target_names(self, blocks: list[int] | None, roles: list[str]) -> list[str]:
        """Qualified names of the linear layers for ``roles`` in ``blocks`` (None = all blocks).

        A role that the backbone does not have (e.g. ``q`` on a fused-qkv model) is an error naming
        the roles it does have, except that ``q``/``k``/``v`` map onto a fused ``qkv`` layer.
        """
        layers = self.linear_layers()
        chosen = range(self.num_blocks) if blocks is None else blocks
        names: list[str] = []
        for b in chosen:
            if b not in layers:
                raise ValueError(f"{self.name}: block {b} out of range 0..{self.num_blocks - 1}")
            available = layers[b]
            for role in roles:
                if role in available:
                    name = available[role]
                elif role in ("q", "k", "v") and "qkv" in available:
                    name = available["qkv"]
                else:
                    raise ValueError(
                        f"{self.name}: block {b} has no linear layer with role {role!r}; "
                        f"available roles: {sorted(available)}"
                    )
                if name not in names:
                    names.append(name)
        return names

    def weights_digest(self) -> str:
        """sha256 over parameter and buffer bytes in name order: the identity of this exact state.

        Memoised on the tensors' identities and in-place version counters, so repeated cache lookups
        under unchanged weights do not rehash hundreds of MB (any update bumps a version or swaps a tensor).
        """
        state = self.state_dict(keep_vars=True)
        stamp = tuple((name, id(t), t._version) for name, t in sorted(state.items()))
        memo = self.__dict__.get("_digest_memo")
        if memo is not None and memo[0] == stamp:
            return memo[1]
        digest = self._hash_state()
        self.__dict__["_digest_memo"] = (stamp, digest)
        return digest

    def _hash_state(self) -> str:
        h = hashlib.sha256()
        for name, t in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def identity(self) -> str:
        """Stable id for caches: registry name + pooling + frontend + exact weights."""
        return f"{self.name}|{self.pooling}|{self.frontend.key()}|{self.weights_digest()}"
