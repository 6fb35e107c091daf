"""Named backbone builds. ``pace backbones`` prints this table.

Each entry says what input it expects, its size, and where its weights come from; the builder takes
the run's BackboneConfig (checkpoint path, pooling, input length) and returns a ready Backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from pace.registry import BACKBONES

if TYPE_CHECKING:
    from pace.backbones.base import Backbone
    from pace.config import BackboneConfig


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    input_kind: str  # "fbank", "whisper-logmel", "waveform"
    embed_dim: int
    num_blocks: int
    weights: str  # where pretrained weights come from
    build: Callable[["BackboneConfig"], "Backbone"]
    test_size: bool = False  # tiny builds for tests and smoke runs
    #: random-init builds take ``options.seed``; the runner fills it from ``seeds.init`` when unset
    seedable: bool = True


def register(spec: BackboneSpec) -> BackboneSpec:
    """A backbone module registers each of its builds at import (``pace.registry.BACKBONES``)."""
    return BACKBONES.add(spec.name, spec)


def list_backbones() -> list[BackboneSpec]:
    return [spec for _, spec in BACKBONES.items()]


def get_spec(name: str) -> BackboneSpec:
    return BACKBONES.get(name)


def build_backbone(cfg: "BackboneConfig", init_seed: int | None = None) -> "Backbone":
    spec = get_spec(cfg.name)
    if init_seed is not None and spec.seedable and "seed" not in cfg.options:
        cfg = cfg.model_copy(update={"options": {**cfg.options, "seed": init_seed}})
    bb = spec.build(cfg)
    bb.name = spec.name
    return bb
