"""SD-LoRA: scalable decoupled low-rank adaptation (Wu et al., ICLR 2025), on an audio backbone.

Checked against the official code, github.com/WuYichen-97/SD-Lora-CL at commit 8bacded (2025-06-26):
``models/sdlora.py``, ``backbone/lora.py`` (LoRA_ViT_timm, _LoRA_qkv_timm_train), ``utils/inc_net.py``
(IncrementalNet), ``exps/sdlora_*.json``.

Every session adds a LoRA on the adapted layers (``pace.peft.lora_variants.DecoupledLoRALinear``).
While its session trains, the new branch enters as ``alpha_t B_t A_t`` (A kaiming-uniform, B zero,
alpha_t from 0.8; A, B and alpha_t all train). At the session's end its direction
``B_t A_t / ||B_t A_t||_F`` is frozen; its magnitude is not. From then on every adapted layer computes

    W = W0 + sum_k alpha_k * B_k A_k / ||B_k A_k||_F

and every later session trains all earlier magnitudes ``alpha_k`` together with its own branch.
Classifier, as in the official code: a linear head that grows by each session's classes (IncrementalNet's
fc), trained with the branch at the same learning rate, with cross-entropy over the current session's
logits only (``logits[:, known:]``), so earlier rows get no gradient; prediction is that head on the
features of the final model (no component selection).

SD-LoRA-RR (rank reduction) is ``session_ranks``: the rank of each session's branch (the last entry
holds for later sessions); the official code's commented-out schedule is 10 for tasks 1-4, 8 for 5-8
and 6 after. SD-LoRA-KD is not done.

Where ours departs from the official code:

- Audio backbones instead of ViT-B/16; branches on q and v of every block (the code: q and v of the
  fused timm qkv). On a fused-qkv backbone (EAT) our branch spans the whole fused output (q, k and v).
- The code keeps one magnitude per task shared by every layer, divides by ``||B||_F ||A||_F`` instead
  of the paper's ``||B A||_F``, and rebuilds the network each task, which restarts every earlier
  magnitude at 0.8. The model it evaluated after a task is therefore not the one the next task starts
  from: the directions are rescaled by 1/norm, layer by layer, and the magnitudes reset. Defaults here:
  one magnitude per layer and session (``magnitudes: per_layer``), the paper's ``||B A||_F``
  (``norm: product``) and magnitudes that carry over, the new one rescaled by its norm at the end
  of its session (``carry_magnitudes: true``), so each session starts from exactly the model
  evaluated after the previous one. ``magnitudes: shared, norm: factors, carry_magnitudes: false``
  is the official code's behaviour.
- SGD (momentum 0.9, no weight decay, constant lr 1e-2, 20 epochs) as in the code; the batch size is
  ``runtime.batch_size`` (128 in the code).
- The code's orthogonality loss between A matrices is computed but never added to the loss: not done.
- The growing head is kept as one ``LinearHead`` per session, logits concatenated: the same map as
  the code's single fc whose old rows get zero gradient under SGD without weight decay.
- New classifier rows start as ``LinearHead``'s (U(+-1/sqrt(d)), zero bias); the code's SimpleLinear
  draws kaiming-uniform rows with the linear gain (U(+-sqrt(3/d))), zero bias.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from pace.config import MethodConfig
from pace.methods.base import Session, register_method
from pace.methods.common import EmbeddingLearner
from pace.methods.diagnostics import instrumenting
from pace.methods.inflora import SessionHeads, Target
from pace.methods.parts import TrainConfig, freeze_backbone, train
from pace.peft.lora_variants import DecoupledLoRAManager, linear_lora_targets


class SDLoRAConfig(MethodConfig):
    """SD-LoRA: per-session LoRA directions frozen after their session; all magnitudes keep learning."""

    name: Literal["sdlora"] = "sdlora"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "train.lr": {"type": "log", "low": 0.001, "high": 0.1},
        "train.epochs": {"type": "int", "low": 2, "high": 10},
    }
    rank: int = Field(10, ge=1)
    #: SD-LoRA-RR: rank of session t's branch (0-based; the last entry holds after); None = rank throughout
    session_ranks: list[int] | None = None
    targets: list[Target] = Field(default_factory=lambda: ["q", "v"])
    blocks: list[int] | None = None  # None = every block
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=20, lr=0.01, momentum=0.9))
    #: the classifier's learning rate; None = train.lr (the code trains both in one optimiser)
    head_lr: float | None = Field(None, gt=0)
    magnitude_init: float = 0.8
    #: per_layer: alpha_{k,l} per session and layer; shared: one alpha_k per session (the code)
    magnitudes: Literal["per_layer", "shared"] = "per_layer"
    #: product: ||B A||_F (the paper); factors: ||B||_F ||A||_F (the code)
    norm: Literal["product", "factors"] = "product"
    #: True: magnitudes carry over between sessions (per_layer: the new one rescaled so the model is
    #: unchanged at the session's end); False: each session restarts them at magnitude_init (the code)
    carry_magnitudes: bool = True

    def rank_of(self, t: int) -> int:
        if not self.session_ranks:
            return self.rank
        return int(self.session_ranks[min(t, len(self.session_ranks) - 1)])


@register_method(SDLoRAConfig)
class SDLoRA(EmbeddingLearner):
    LINEAR_LAYERS_ONLY = True  # linear_lora_targets

    def __init__(self, cfg: SDLoRAConfig, backbone, ctx):
        super().__init__(cfg, backbone, ctx)
        if cfg.session_ranks is not None and (not cfg.session_ranks or min(cfg.session_ranks) < 1):
            raise ValueError("sdlora: session_ranks must be a non-empty list of ranks >= 1")
        blocks = list(range(backbone.num_blocks)) if cfg.blocks is None else list(cfg.blocks)
        self.targets = linear_lora_targets("sdlora", backbone, blocks, cfg.targets,
                                           max([cfg.rank, *(cfg.session_ranks or [])]))
        freeze_backbone(backbone)
        self.manager = DecoupledLoRAManager(backbone, self.targets, shared=cfg.magnitudes == "shared")
        self.heads = SessionHeads(backbone.embed_dim).to(ctx.device)

    def learn(self, session: Session) -> None:
        ctx, cfg, t = self.ctx, self.cfg, session.index
        if t > 0 and not cfg.carry_magnitudes:
            self.manager.reset_magnitudes(cfg.magnitude_init)
        self.manager.add_session(cfg.rank_of(t), cfg.magnitude_init, ctx.generator(f"sdlora-lora:{t}"))
        params = self.manager.trainable_parameters()
        head = self.heads.add(len(session.classes), ctx.generator(f"sdlora-head:{t}"), ctx.device)
        train(self.backbone, head, session.train, ctx, cfg.train, backbone_params=params,
              head_lr=cfg.head_lr or cfg.train.lr, label_offset=session.classes[0], purpose=f"sdlora:{t}")
        self.manager.finalize(cfg.norm, keep_function=cfg.carry_magnitudes)
        self.manager.freeze_magnitudes()
        head.requires_grad_(False)
        with instrumenting(ctx) as d:
            d["adapted"], d["stage"] = 1, "sdlora"
            d["lora_trained_params"] = sum(p.numel() for p in params)
            new_sq = total_sq = base_sq = 0.0
            for m in self.manager.modules.values():
                new_sq += float(m.stack_delta(m.num_sessions - 1).square().sum())
                total_sq += float((m.effective_weight() - m.base.weight.double()).square().sum())
                base_sq += float(m.base.weight.double().square().sum())
            d["delta_w_session_rel"] = (new_sq / base_sq) ** 0.5
            d["delta_w_rel"] = (total_sq / base_sq) ** 0.5
            # mean |alpha_k| over layers, per session: how the old directions are being reweighted
            layers = list(self.manager.modules.values())
            d["magnitude_session"] = {str(k): sum(abs(float(m.magnitudes[k])) for m in layers) / len(layers)
                                      for k in range(self.manager.num_sessions)}

    def logits_from_embeddings(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.heads(z.to(self.ctx.device).float())[:, : self.num_seen].float()

    def state_dict(self):
        return {**super().state_dict(), "lora": self.manager.state_dict(), "heads": self.heads.state()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.manager.load_state_dict(state["lora"])
        self.manager.freeze_magnitudes()
        self.heads.load(state["heads"], self.ctx.device)
