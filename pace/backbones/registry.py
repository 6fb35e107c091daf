"""Named backbone builds. ``pace backbones`` prints this table.

Each entry says what input it expects, its size, and where its weights come from; the builder takes
the run's BackboneConfig (checkpoint path, pooling, input length) and returns a ready Backbone.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

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


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtin() -> None:
    # Importing a module registers its backbones; keep heavy imports inside the builders.
    import pace.backbones.logmel  # noqa: F401

    for mod in ("pace.backbones.eat", "pace.backbones.whisper", "pace.backbones.hf"):
        try:
            __import__(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def list_backbones() -> list[BackboneSpec]:
    _load_builtin()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_spec(name: str) -> BackboneSpec:
    _load_builtin()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown backbone {name!r}{hint} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def build_backbone(cfg: "BackboneConfig", init_seed: int | None = None) -> "Backbone":
    spec = get_spec(cfg.name)
    if init_seed is not None and spec.seedable and "seed" not in cfg.options:
        cfg = cfg.model_copy(update={"options": {**cfg.options, "seed": init_seed}})
    bb = spec.build(cfg)
    bb.name = spec.name
    return bb
