"""PACE (Li, Zhou, Wang, ICLR 2026): pretrained audio continual learning.

Composed from the parts in ``parts.py``, ``pace.peft``, ``pace.losses`` and ``pace.analysis``:

Stage 1, improved first-session adaptation (session 1)
  a. CKA probe (``layer_selection: cka``): a copy of the backbone gets LoRA on every block and a
     linear head, trained jointly for ``probe_epochs`` at ``lr_backbone``; per-block linear CKA (pooled
     features, session-1 training clips) against the pretrained backbone; L_tune = the first block
     with CKA < ``rho_layer``. The probe is thrown away. ``fixed`` uses ``freeze_first``; ``all`` = 0.
  b. Restricted head learning (``head_strategy: learn_freeze``): a linear head is trained for
     ``head_epochs`` at ``lr_head`` on the frozen backbone, then frozen. ``low_lr`` trains it jointly
     with LoRA at ``lr_head``; ``same_lr`` jointly at ``lr_backbone`` (naive FSA).
  c. LoRA on blocks >= L_tune, trained ``fsa_epochs`` (E_0) at ``lr_backbone`` through the head,
     plus the boundary-aware loss. The head is dropped; the analytic classifier is initialised.
Stage 2, multi-session adaptation (sessions 2..T_3)
  A new LoRA stack per session on the same blocks (earlier stacks frozen). With ``projection``, the
  uncentred covariance of every LoRA layer's input is computed on the session's data under the
  LoRA-subtracted model (W0 - sum of earlier B A), a basis keeping ``rho_svd`` of the energy is
  taken, and the new stack's updates are projected onto its orthogonal complement
  (``projection_mode: complement``, the default) or onto it (``onto``). A temporary head over the
  session's classes is warmed up and frozen as in
  stage 1b, then LoRA trains ``msa_epochs`` (+ boundary loss). Adaptation stops adaptively: session t
  is adapted while the training clips of sessions 1..t-1 number at most ``n_stop`` (so T_3 = 14 for
  sessions of 16 clips and 10 for 24 at N_stop = 220), or up to a fixed ``t3``.
Stage 3 (t > T_3): the backbone is frozen; only the analytic classifier is updated.
The analytic classifier (random projection, D_proj = 8192, ridge) is updated in closed form every
session with the embeddings of that session under the backbone as it is after that session; old
statistics are not recomputed (exemplar-free, as the paper).

Choices where the paper is silent (all config fields): LoRA rank 8 / alpha 16 on q and v; SGD with
momentum 0.9, no weight decay, no schedule; ridge selected per session as RanPAC does (``analytic``;
the recursive Woodbury form with a fixed gamma gives the same solution for the same lam); mask ratios
0.2 of time and of mel bins, masked value 0 (the normalised mean level); theta_temp = the current
model with its warmed-up temporary head, evaluated once per adapted session before LoRA training;
boundary points are the clean features of boundary-prone samples, class centres the mean clean
features per class at that time (both detached), distances on L2-normalised features (so delta = 0.25
has a fixed scale); the loss uses ``loss_views`` of the N_p views per step to bound its cost; MSA runs
on every data set the N_stop rule admits (coarse ones included: set ``msa: false`` for FSA only).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from pace.analysis import block_features, linear_cka
from pace.config import MethodConfig
from pace.heads.linear import CosineHead
from pace.losses import boundary_loss, boundary_set, perturb
from pace.methods.base import Session, Split, register_method
from pace.methods.common import EmbeddingLearner, split_embeddings
from pace.methods.diagnostics import (basis_ranks, embeddings_before, instrumenting, mean_cosine, not_adapted,
                                     record_adaptation)
from pace.methods.parts import (Adapter, AnalyticClassifier, AnalyticConfig, LoRAConfig, TrainConfig,
                                evaluating, freeze_backbone, session_head, train)
from pace.methods.stages import run_stage
from pace.peft.projection import GradientProjector, collect_input_covariances, subspace_bases


class PACEConfig(MethodConfig):
    """PACE: improved FSA + subspace-projected multi-session LoRA + boundary loss + analytic head."""

    name: Literal["pace"] = "pace"
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {
        "lr_backbone": {"type": "log", "low": 0.001, "high": 0.1},
        "fsa_epochs": {"type": "int", "low": 2, "high": 10},
        "head_strategy": {"type": "categorical", "values": ["learn_freeze", "same_lr"]},
        "lr_head": {"type": "log", "low": 0.001, "high": 0.1, "when": {"head_strategy": "learn_freeze"}},
        "head_epochs": {"type": "int", "low": 1, "high": 5, "when": {"head_strategy": "learn_freeze"}},
        "msa_lr": {"type": "log", "low": 0.0001, "high": 0.05},
        "msa_epochs": {"type": "int", "low": 1, "high": 5},
    }
    # ---- stage 1
    fsa: bool = True
    fsa_epochs: int = Field(5, ge=0)  # E_0 (paper: 1 to 30 per data set)
    lr_backbone: float = Field(0.05, gt=0)  # eta_bb
    lr_head: float = Field(0.01, gt=0)  # eta_head
    head_epochs: int = Field(1, ge=0)  # E_head
    head_strategy: Literal["learn_freeze", "low_lr", "same_lr"] = "learn_freeze"
    #: the temporary head LoRA trains through (FSA and MSA). linear: the paper's (as we read it);
    #: cosine: RanPAC's FSA head (bounded logits, scale 16), whose loss does not vanish once a
    #: session of few classes is separated, so LoRA keeps moving the features
    temp_head: Literal["linear", "cosine"] = "linear"
    layer_selection: Literal["cka", "fixed", "all"] = "cka"
    rho_layer: float = Field(0.94, gt=0, le=1)
    freeze_first: int = Field(0, ge=0)  # layer_selection: fixed
    probe_epochs: int | None = Field(None, ge=1)  # default: fsa_epochs
    cka_samples: int = Field(256, ge=8)
    # ---- stage 2
    msa: bool = True
    msa_stop: Literal["adaptive", "fixed"] = "adaptive"
    n_stop: int = Field(220, ge=0)
    t3: int = Field(2, ge=1)  # msa_stop: fixed; the last adapted session, 1-based
    msa_epochs: int = Field(5, ge=1)
    #: LoRA learning rate in multi-session adaptation; None = lr_backbone (the paper uses one eta_bb)
    msa_lr: float | None = Field(None, gt=0)
    projection: bool = True
    #: complement: updates orthogonal to the top-energy input subspace (protects inputs in it); onto:
    #: updates inside it. The sources disagree (pace_method.md 9.5); on FSDD digit x speaker with
    #: Whisper tiny.en, "onto" at rho 0.99 left old-session accuracy at 0 % after three MSA sessions
    #: (old and new sessions share one input distribution, so the subspace protects nothing), while
    #: "complement" kept it at 75-92 %: the default follows the evidence.
    projection_mode: Literal["onto", "complement"] = "complement"
    #: current: the basis comes from the session's own clips under the LoRA-subtracted model (the
    #: paper / LoRA-DRS). memory: GPM-style, from the clips of the sessions already learned: after each
    #: session (while later ones may still be adapted) the uncentred covariance of every LoRA layer's
    #: inputs on its training clips, under the backbone as it then is, joins a running clip-weighted
    #: mean (statistics only, no clip is kept); updates go to the orthogonal complement of that
    #: memory's basis, so the inputs the analytic head's old statistics were computed from move least
    projection_basis: Literal["current", "memory"] = "current"
    rho_svd: float = Field(0.99, gt=0, le=1)
    energy: Literal["eig", "sv2"] = "eig"
    # ---- boundary-aware loss
    boundary_loss: bool = True
    lambda_reg: float = Field(1.0, ge=0)
    n_views: int = Field(20, ge=1)  # N_p, used to find boundary-prone samples
    loss_views: int = Field(4, ge=1)  # views per sample inside the training loss
    rho_p: float = Field(0.3, ge=0, le=1)
    delta: float = Field(0.25, ge=0)
    perturbation: Literal["mask", "noise", "pitch"] = "mask"
    mask_ratio_time: float = Field(0.2, ge=0, le=1)
    mask_ratio_freq: float = Field(0.2, ge=0, le=1)
    noise_snr_db: float = 10.0
    pitch_max_shift: int = Field(4, ge=1)
    normalize_features: bool = True
    # ---- parts
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    analytic: AnalyticConfig = Field(default_factory=AnalyticConfig)


def adapts_session(index: int, samples_before: int, cfg: PACEConfig) -> bool:
    """Whether session ``index`` (0-based, >= 1) gets multi-session adaptation."""
    if not cfg.msa or index == 0:
        return False
    if cfg.msa_stop == "fixed":
        return index + 1 <= cfg.t3
    return samples_before <= cfg.n_stop


def last_adapted_session(session_sizes: list[int], n_stop: int) -> int:
    """T_3 (1-based) under the adaptive rule for given training-set sizes per session."""
    seen, last = 0, 1
    for t, n in enumerate(session_sizes):
        if t > 0 and seen <= n_stop:
            last = t + 1
        seen += n
    return last


#: fields that act only after session 1's adaptation: trials differing only in them share its outcome
#: (pace.methods.stages); tests/test_stages.py checks both that they do not change that outcome and
#: that every other field changes the key
FSA_DOWNSTREAM = frozenset({"msa", "msa_stop", "n_stop", "t3", "msa_epochs", "msa_lr", "projection",
                            "projection_mode", "projection_basis", "rho_svd", "energy", "analytic"})


@register_method(PACEConfig)
class PACE(EmbeddingLearner):
    STAGE_DOWNSTREAM = {"fsa": FSA_DOWNSTREAM}

    def __init__(self, cfg: PACEConfig, backbone, ctx):
        super().__init__(cfg, backbone, ctx)
        freeze_backbone(backbone)
        self.adapter = Adapter(backbone, cfg.lora)
        self.classifier = AnalyticClassifier(backbone.embed_dim, cfg.analytic, seed=ctx.seeds.init).to(ctx.device)
        self.samples_seen = 0
        self.l_tune = -1  # chosen first adapted block (-1 = not chosen yet)
        self.cka: list[float] = []
        self.adapted_sessions: list[int] = []
        #: what ran, in order ("probe", "head_warmup:1", "lora:2", "projection:2", ...): the record that
        #: each switch changed the computation, for logs and tests. Entries that record a decision read
        #: it from what ran: "perturbation:1:mask" (the kind boundary_set drew views with),
        #: "projected:2:complement:in_span=0.00" (share of the trained A inside the basis span),
        #: "lora:1:...:head_lr=frozen" (the head's rate in LoRA training), "temp_head:1:linear"
        self.trace: list[str] = []
        #: projection_basis: memory; {layer: mean uncentred input covariance} over the clips of memory_n
        self.memory: dict[str, torch.Tensor] = {}
        self.memory_n = 0

    # ------------------------------------------------------------------ session loop
    def learn(self, session: Session) -> None:
        needs_blocks = (session.index == 0 and self.cfg.fsa) or (session.index > 0 and self.cfg.msa)
        if needs_blocks and self.backbone.num_blocks == 0:
            raise ValueError(f"PACE adaptation needs a transformer backbone; {self.backbone.name!r} has no "
                             "blocks (set method.fsa: false and method.msa: false for analytic-only)")
        stage = None
        if session.index == 0 and self.cfg.fsa:
            stage, z_before = "fsa", embeddings_before(self, session)
            run_stage(self, "fsa", session.train, lambda: self._first_session(session),
                      save=self._fsa_state, load=self._load_fsa_state)
        elif adapts_session(session.index, self.samples_seen, self.cfg):
            stage, z_before = "msa", embeddings_before(self, session)
            self._adapt_session(session)
        self.ctx.diagnostics["msa_ran"] = int(stage == "msa")
        z = split_embeddings(self, session.train).to(self.ctx.device)
        self._diagnose(session, stage, z_before if stage else None, z)
        self.classifier.fit_session(z, session.train.y.to(self.ctx.device), session.num_seen,
                                    self.ctx.generator(f"ridge:{session.index}"))
        self.trace.append(f"analytic:{session.index + 1}")
        self.ctx.diagnostics.update(self.classifier.ridge_diagnostics())
        self.samples_seen += len(session.train)
        if (self.cfg.projection and self.cfg.projection_basis == "memory" and self.adapter.manager is not None
                and adapts_session(session.index + 1, self.samples_seen, self.cfg)):
            self._remember_inputs(session)

    def logits_from_embeddings(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier.logits(z)[:, : self.num_seen]

    def _diagnose(self, session: Session, stage: str | None, z_before, z_after: torch.Tensor) -> None:
        """The adaptation instruments (pace.methods.diagnostics); session 1's clips are kept with
        their pretrained embeddings so later sessions can say how far those features moved."""
        z_after = z_after.cpu()
        if session.index == 0:
            self._diag_session1 = (session.train, z_before if stage else z_after)
        if not stage:
            not_adapted(self.ctx)
            return
        record_adaptation(self, session, z_before, z_after, stage, self.cfg.analytic)
        if getattr(self, "_diag_session1", None) is not None:
            split1, z1 = self._diag_session1
            with instrumenting(self.ctx) as d:
                now = z_after if session.index == 0 else split_embeddings(self, split1)
                d["emb_cosine_session1"] = mean_cosine(z1, now)

    # ------------------------------------------------------------------ stage 1
    def _first_session(self, session: Session) -> None:
        self.l_tune = self._choose_first_block(session.train)
        self.ctx.diagnostics["l_tune"] = self.l_tune
        self.adapter.attach(list(range(self.l_tune, self.backbone.num_blocks)))
        self._train_session(session, self.cfg.fsa_epochs)
        self.adapted_sessions.append(session.index)

    def _fsa_state(self) -> dict:
        return {"adapter": self.adapter.state_dict(), "l_tune": self.l_tune, "cka": list(self.cka),
                "adapted_sessions": list(self.adapted_sessions), "trace": list(self.trace)}

    def _load_fsa_state(self, state: dict) -> None:
        self.adapter.load_state_dict(state["adapter"])
        self.l_tune = int(state["l_tune"])
        self.cka = [float(v) for v in state["cka"]]
        self.adapted_sessions = [int(v) for v in state["adapted_sessions"]]
        self.trace = list(state["trace"])

    def _choose_first_block(self, split: Split) -> int:
        cfg, nb = self.cfg, self.backbone.num_blocks
        if cfg.layer_selection == "all":
            return 0
        if cfg.layer_selection == "fixed":
            if cfg.freeze_first >= nb:
                raise ValueError(f"method.freeze_first={cfg.freeze_first} leaves no block of {nb} to adapt")
            return cfg.freeze_first
        # the probe decides only the CKA values: variants that differ in rho_layer, the head or the
        # boundary loss share it; its key is exactly what _cka_probe reads
        run_stage(self, "probe", split, lambda: setattr(self, "cka", self._cka_probe(split)),
                  save=lambda: {"cka": list(self.cka)},
                  load=lambda st: setattr(self, "cka", [float(v) for v in st["cka"]]),
                  fields=self._probe_fields())
        self.trace.append("probe")
        below = [k for k, s in enumerate(self.cka) if s < cfg.rho_layer]
        self.ctx.diagnostics.update({"cka_block": list(self.cka), "cka_fallback": int(not below)})
        # No block moved enough: adapt only the last one rather than none (documented fallback).
        return below[0] if below else nb - 1

    def _probe_fields(self) -> dict:
        return {"train": self._probe_train_cfg().model_dump(mode="json"),
                "lora": self.cfg.lora.model_dump(mode="json"), "cka_samples": self.cfg.cka_samples}

    def _probe_train_cfg(self) -> TrainConfig:
        return self._train_cfg(self.cfg.probe_epochs or self.cfg.fsa_epochs)

    def _cka_probe(self, split: Split) -> list[float]:
        """Naive FSA on a throw-away copy (LoRA on all blocks + head, same lr), then CKA per block."""
        probe = copy.deepcopy(self.backbone)
        adapter = Adapter(probe, self.cfg.lora)
        adapter.attach(list(range(probe.num_blocks)))
        params = adapter.new_session(self.ctx.generator("probe-lora"))
        n_cls = int(split.y.max() - split.y.min()) + 1
        head = session_head(probe.embed_dim, n_cls, "linear", self.ctx.generator("probe-head"), self.ctx.device)
        train(probe, head, split, self.ctx, self._probe_train_cfg(),
              backbone_params=params, head_lr=self.cfg.lr_backbone, label_offset=int(split.y.min()),
              purpose="probe")
        x = split.x[: self.cfg.cka_samples]
        with torch.no_grad():
            fa = block_features(probe, x, self.ctx.eval_batch_size)
            fb = block_features(self.backbone, x, self.ctx.eval_batch_size)
        self.ctx.count("forward_samples", 2 * len(x))
        return [linear_cka(a, b) for a, b in zip(fa, fb)]

    # ------------------------------------------------------------------ stage 2
    def _adapt_session(self, session: Session) -> None:
        if self.adapter.manager is None:  # FSA was switched off: adapt from block L_tune chosen now
            self.l_tune = self._choose_first_block(session.train)
            self.ctx.diagnostics["l_tune"] = self.l_tune
            self.adapter.attach(list(range(self.l_tune, self.backbone.num_blocks)))
        self._train_session(session, self.cfg.msa_epochs, project=self.cfg.projection, lr=self.cfg.msa_lr)
        self.adapted_sessions.append(session.index)

    # ------------------------------------------------------------------ shared training step
    def _train_cfg(self, epochs: int, lr: float | None = None) -> TrainConfig:
        return TrainConfig(epochs=epochs, lr=lr or self.cfg.lr_backbone, momentum=self.cfg.momentum,
                           weight_decay=self.cfg.weight_decay)

    def _train_session(self, session: Session, epochs: int, project: bool = False,
                       lr: float | None = None) -> None:
        cfg, ctx, bb = self.cfg, self.ctx, self.backbone
        t = session.index
        params = self.adapter.new_session(ctx.generator(f"lora:{t}"))
        projector = None
        if project:
            if cfg.projection_basis == "memory" and self.memory:
                bases, mode = subspace_bases(self.memory, cfg.rho_svd, cfg.energy), "complement"
            else:
                covs = collect_input_covariances(self.adapter.manager, bb, session.train.x, ctx.eval_batch_size,
                                                 ctx.device)
                ctx.count("forward_samples", len(session.train))
                bases, mode = subspace_bases(covs, cfg.rho_svd, cfg.energy), cfg.projection_mode
            projector = GradientProjector(self.adapter.manager, bases, mode=mode)
            self.trace.append(f"projection:{t + 1}")
            self.basis_ranks = {name: int(u.shape[1]) for name, u in bases.items()}
            ctx.diagnostics.update(basis_ranks(self.adapter, bases))
        head = session_head(bb.embed_dim, len(session.classes), cfg.temp_head, ctx.generator(f"head:{t}"), ctx.device)
        offset = session.classes[0]
        head_lr = None
        if cfg.head_strategy == "learn_freeze":
            # restricted head learning: warm the head up on the current backbone, then freeze it
            train(bb, head, session.train, ctx, self._train_cfg(cfg.head_epochs), backbone_params=[],
                  head_lr=cfg.lr_head, label_offset=offset, purpose=f"head:{t}")
            self.trace.append(f"head_warmup:{t + 1}")
        else:
            head_lr = cfg.lr_head if cfg.head_strategy == "low_lr" else cfg.lr_backbone
        extra = self._boundary_term(session, head, offset) if cfg.boundary_loss and cfg.lambda_reg > 0 else None
        # recorded from what was built and passed to train(), not echoed from the config
        self.trace.append(f"temp_head:{t + 1}:{'cosine' if isinstance(head, CosineHead) else 'linear'}")
        self.trace.append(f"lora:{t + 1}:blocks={self.adapter.blocks[0]}-{self.adapter.blocks[-1]}:"
                          f"head={cfg.head_strategy}:head_lr={'frozen' if head_lr is None else f'{head_lr:g}'}"
                          + (":boundary" if extra else ""))
        try:
            train(bb, head, session.train, ctx, self._train_cfg(epochs, lr), backbone_params=params, head_lr=head_lr,
                  label_offset=offset, purpose=f"lora:{t}", extra_loss=extra,
                  after_step=projector.reproject if projector else None)
            if projector is not None:
                # what projection_mode did: the share of the new stack's A inside span(U), 1 onto, 0 complement
                self.trace.append(f"projected:{t + 1}:{mode}:in_span={projector.span_fraction():.2f}")
        finally:
            if projector is not None:
                projector.remove()
        self.adapter.freeze()

    def _remember_inputs(self, session: Session) -> None:
        """Fold this session's layer-input covariances (current backbone) into the memory."""
        n = len(session.train)
        covs = collect_input_covariances(self.adapter.manager, self.backbone, session.train.x,
                                         self.ctx.eval_batch_size, self.ctx.device, subtracted=False)
        self.ctx.count("forward_samples", n)
        total = self.memory_n + n
        self.memory = {k: (self.memory[k] * (self.memory_n / total) if k in self.memory else 0) + c * (n / total)
                       for k, c in covs.items()}
        self.memory_n = total
        self.trace.append(f"memory:{session.index + 1}")

    def _perturb_options(self) -> dict:
        cfg = self.cfg
        opts = {"mask": {"r_t": cfg.mask_ratio_time, "r_f": cfg.mask_ratio_freq},
                "noise": {"snr_db": cfg.noise_snr_db},
                "pitch": {"max_shift": cfg.pitch_max_shift}}[cfg.perturbation]
        # waveform backbones (CREPE, wav2vec2): pace.losses.perturb's raw-audio views
        return {**opts, "waveform": True} if getattr(self.backbone.frontend, "kind", "") == "waveform" else opts

    def _boundary_term(self, session: Session, head, offset: int):
        """Find boundary-prone samples with theta_temp (current model + head) and build Eq. 8's term."""
        cfg, ctx, bb = self.cfg, self.ctx, self.backbone
        split = session.train
        y_local = split.y - offset
        layout = _fbank_layout(bb)

        def model_fn(x):
            feats = bb(layout.to_model(x)).pooled.float()
            return feats, head(feats)

        with evaluating(bb, head), torch.no_grad():
            bset = boundary_set(model_fn, layout.to_tf(split.x), y_local, n_views=cfg.n_views, rho_p=cfg.rho_p,
                                kind=cfg.perturbation, generator=ctx.generator(f"boundary:{session.index}"),
                                batch_size=ctx.eval_batch_size, device=ctx.device, **self._perturb_options())
            clean = bset.candidates  # the clean features, batch for batch as boundary_set computed them
        ctx.count("forward_samples", bset.views_evaluated + len(split))
        centres = torch.stack([clean[y_local.to(clean.device) == c].mean(0) for c in range(len(session.classes))])
        self.trace.append(f"boundary:{session.index + 1}:{len(bset)}")
        # the kind boundary_set drew its views with (the loss below draws the same kind)
        self.trace.append(f"perturbation:{session.index + 1}:{bset.kind}")
        if len(bset) == 0:
            return None
        g = ctx.generator(f"boundary-views:{session.index}")

        def extra(feats, y, x, idx):
            views = perturb(layout.to_tf(x), bset.kind, cfg.loss_views, g, **self._perturb_options())
            v = bb(layout.to_model(views.flatten(0, 1))).pooled.float().reshape(len(x), cfg.loss_views, -1)
            loss = boundary_loss(v, y, feats, bset.points.to(feats.device), centres.to(feats.device),
                                 delta=cfg.delta, normalize=cfg.normalize_features, anchor_index=idx,
                                 boundary_index=bset.indices)
            return cfg.lambda_reg * loss

        return extra

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self):
        return {**super().state_dict(), "adapter": self.adapter.state_dict(),
                "classifier": self.classifier.state_dict(), "samples_seen": self.samples_seen,
                "l_tune": self.l_tune, "cka": list(self.cka), "adapted_sessions": list(self.adapted_sessions),
                "trace": list(self.trace), "memory": dict(self.memory), "memory_n": self.memory_n}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.adapter.load_state_dict(state["adapter"])
        self.classifier.load_state_dict(state["classifier"])
        self.samples_seen = int(state["samples_seen"])
        self.l_tune = int(state["l_tune"])
        self.cka = [float(v) for v in state["cka"]]
        self.adapted_sessions = [int(v) for v in state["adapted_sessions"]]
        self.trace = list(state["trace"])
        self.memory = dict(state.get("memory", {}))
        self.memory_n = int(state.get("memory_n", 0))


class _Layout:
    """Maps a backbone's input batch to (B, time, freq) for the spectrogram perturbations and back."""

    def __init__(self, freq_first: bool):
        self.freq_first = freq_first

    def to_tf(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-1, -2) if self.freq_first else x

    to_model = to_tf  # a transpose is its own inverse


def _fbank_layout(backbone) -> _Layout:
    # waveform inputs (B, S) pass through unchanged (perturbed with waveform=True, see _perturb_options)
    return _Layout(freq_first=bool(getattr(backbone.frontend, "freq_first", False)))
