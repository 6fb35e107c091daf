"""Typed, validated run configuration.

A run config is YAML on disk; every section is a pydantic model that forbids unknown keys. An unknown
or misspelt key is an error naming its dotted path and the closest valid key. Method sections are
dispatched by ``method.name`` to the config class that method registered, so each method owns its
fields (Mammoth-style per-method configs) and ``config.py`` never grows a branch per method.
"""

from __future__ import annotations

import copy
import re
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator,
                      model_validator)

from pace.registry import DATASETS, METHODS, did_you_mean


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file/field and what was expected."""


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _keep_preset_defaults(cls, data: Any) -> Any:
        """A partial section keeps the values its owner presets, not the section class's own defaults.

        RanPAC's FSA trains at lr 0.01 (``FSAConfig.train`` presets it), CODA-Prompt at 1e-3 with a
        cosine schedule, ACL's head is recursive with a fixed lam: ``fsa: {train: {epochs: 10}}`` must
        change the epochs only, not silently reset the rest to ``TrainConfig``'s generic defaults.
        """
        if not isinstance(data, dict):
            return data
        out = None
        for name, field in cls.model_fields.items():
            value = data.get(name)
            if not isinstance(value, dict) or field.default_factory is None:
                continue
            preset = field.default_factory()
            if not isinstance(preset, BaseModel):
                continue
            given = preset.model_dump(exclude_unset=True)  # what the owner set, not the class defaults
            if given:
                out = dict(data) if out is None else out
                out[name] = _deep_merge(given, value)
        return data if out is None else out


class Seeds(Strict):
    """Separate seeds so that class order, data split and model init can be varied independently."""

    class_order: int = 0
    split: int = 0
    init: int = 0


class DataConfig(Strict):
    #: a registered data set (``pace data list``; pace.data.datasets.dataset registers one)
    dataset: str = "synthetic"
    #: dataset root (fsdd, folder) or CSV file (manifest); fsdd defaults to $PACE_FSDD_ROOT or ../shared
    root: str | None = None
    #: label to learn; each data set's labels (the first is its default) are listed by ``pace data list``
    label: str | None = None
    #: named subset. esc50: esc10; nsynth: nonvocal | acoustic | electronic | synthetic (join with '+')
    subset: str | None = None
    #: dataset=sequence: the data sets in session order (pace/data/sequence.py)
    parts: list[SequencePart] = Field(default_factory=list)
    #: skip unreadable/empty/silent files (listed in the run output) instead of failing
    skip_bad: bool = False
    #: keep at most N clips per class (a fixed hash-ordered subset; quick runs and tests); None = all
    max_per_class: int | None = Field(None, ge=2)
    #: synthetic data set size
    synthetic_classes: int = Field(10, ge=2)
    synthetic_clips_per_class: int = Field(20, ge=2)
    synthetic_seconds: float = Field(1.0, gt=0.1, le=10.0)
    synthetic_seed: int = 1234

    @field_validator("dataset")
    @classmethod
    def _registered(cls, v: str) -> str:
        DATASETS.get(v)  # RegistryError: unknown data set, did you mean, the known ones
        return v


class SequencePart(Strict):
    """One data set of a cross-dataset sequence; its classes fill ``num_sessions`` consecutive sessions."""

    #: label prefix ("esc50" -> "esc50:dog"), so the parts' label spaces stay apart
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    data: DataConfig
    num_sessions: int = Field(ge=1)
    #: use only the first N classes of this part's seeded class order
    max_classes: int | None = Field(None, ge=1)


DataConfig.model_rebuild()


class ScenarioConfig(Strict):
    num_sessions: int = Field(5, ge=1)
    #: classes in the first session; None = equal sessions (the paper's setting)
    first_session_classes: int | None = Field(None, ge=1)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    #: fraction of each class's training clips held out for hyperparameter search (never test data)
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    #: use the data set's own train/test split (e.g. FSDD index 0-4 = test) instead of a seeded 8:2
    official_split: bool = False
    #: use only the first N classes of the class order (quick runs); None = all
    max_classes: int | None = Field(None, ge=2)


class BackboneConfig(Strict):
    name: str = "logmel-stats"
    #: local checkpoint file or folder; a hub id only resolves from the local HF cache (offline)
    checkpoint: str | None = None
    pooling: Literal["cls", "mean"] | None = None
    #: fbank frames after pad/crop (fbank backbones); 512 = 5.12 s as in the paper
    target_frames: int | None = Field(None, ge=16)
    #: waveform samples at 16 kHz after pad/crop (waveform backbones)
    num_samples: int | None = Field(None, ge=400)
    #: input seconds for backbones with their own frontend (Whisper)
    seconds: float | None = Field(None, gt=0.0, le=30.0)
    #: backbone-specific build options (e.g. a tiny test size: {"size": "tiny"})
    options: dict[str, Any] = Field(default_factory=dict)

    def frontend_overrides(self) -> dict[str, Any]:
        return {} if self.target_frames is None else {"target_frames": self.target_frames}


class RuntimeConfig(Strict):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = Field(24, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    num_threads: int | None = Field(None, ge=1)
    #: content-addressed cache of features/embeddings; None = $PACE_CACHE_DIR or ~/.cache/pace
    cache_dir: str | None = None
    use_cache: bool = True
    #: load a learner stage's outcome (first-session adaptation, the CKA probe) that a run with the
    #: same deciding inputs stored in the cache, instead of recomputing it (pace.methods.stages)
    reuse_stages: bool = True
    #: storage type of frontend features in the feature store (float16: half the disk and page cache)
    feature_dtype: Literal["float32", "float16"] = "float32"
    progress: bool = True
    #: write the resume checkpoint after every N-th session (and always after the last); "auto": after
    #: every session while it is under 64 MiB, a larger one once the sessions since took 20x its write
    #: time (pace.checkpoint_clock). A resume recomputes the sessions after it: results do not depend on it
    checkpoint_every: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    #: bf16 autocast for backbone forward passes on CUDA
    bf16: bool = True


class MethodConfig(Strict):
    """Base of every method's config; each method's module registers its config with its learner
    (``pace.methods.base.register_method``), so the method owns its fields."""

    name: str

    #: the method's own search space for ``pace tune`` (pace.study.tune), declared beside its fields:
    #: key relative to the method section -> a sweep ``Param`` mapping (type, low/high or values, and
    #: ``when`` for a conditional key, its keys relative too). Every method is tuned over its own space
    #: with the same trial budget; empty = nothing to tune (the method runs as configured).
    SEARCH_SPACE: ClassVar[dict[str, dict[str, Any]]] = {}
    #: a non-continual reference (joint training): not a competitor, so a study that compares it
    #: untuned against tuned methods is not flagged (pace.study.checks.tuning_gaps)
    UPPER_BOUND: ClassVar[bool] = False

    @staticmethod
    def known() -> list[str]:
        return METHODS.names()

    @staticmethod
    def config_class(name: str) -> type["MethodConfig"]:
        """The config class of the method registered as ``name`` (RegistryError names the known ones)."""
        return METHODS.get(name).config_cls


class AnalysisConfig(Strict):
    """Runner hooks that measure, never change, what a method learns (off by default)."""

    cka: bool = False
    drift: bool = False
    #: clips per session used by the analyses
    max_samples: int = Field(256, ge=8)


class RunConfig(Strict):
    name: str = "run"
    seeds: Seeds = Field(default_factory=Seeds)
    data: DataConfig = Field(default_factory=DataConfig)
    scenario: ScenarioConfig = Field(default_factory=ScenarioConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    method: SerializeAsAny[MethodConfig]
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    #: free-form labels carried into tracking (variant, study, ...)
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("method", mode="before")
    @classmethod
    def _dispatch_method(cls, v: Any) -> Any:
        if isinstance(v, MethodConfig):
            return v
        if not isinstance(v, dict) or "name" not in v:
            raise ValueError("method must be a mapping with a 'name' (one of: "
                             f"{', '.join(MethodConfig.known())})")
        return MethodConfig.config_class(v["name"]).model_validate(v)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ----------------------------------------------------------------------------------------------
# Loading, overrides and friendly errors


def _field_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model inside an annotation, whether a mapping key or list index sits between the field and it)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if origin in (dict, list) and args:
        inner, _ = _field_model(args[-1])
        return inner, True
    for a in args:  # Optional / Union / Annotated
        inner, mapped = _field_model(a)
        if inner is not None:
            return inner, mapped
    return None, False


def _valid_keys(model: type[BaseModel], loc: tuple, sections: dict[str, type[BaseModel]] | None = None
                ) -> list[str]:
    """Field names valid at ``loc`` (a pydantic error location, union members removed) inside ``model``;
    ``sections`` replaces the model of a top-level field dispatched at validation (``method``)."""
    cur: type[BaseModel] | None = model
    i = 0
    parts = loc[:-1]
    while i < len(parts) and cur is not None:
        if i == 0 and sections and str(parts[0]) in sections:
            cur, i = sections[str(parts[0])], 1
            continue
        field = cur.model_fields.get(str(parts[i]))
        if field is None:
            return []
        cur, mapped = _field_model(field.annotation)
        i += 2 if mapped else 1
    return list(cur.model_fields) if cur is not None and i == len(parts) else []


def _where(loc: tuple) -> str:
    """A location as the user wrote it: dotted keys, [i] for list items, ['a.b'] for keys with dots."""
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif "." in str(p) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(p)):
            out += f"[{str(p)!r}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "<top level>"


#: location parts pydantic adds for union members and validators (not keys the user wrote)
_NOT_A_KEY = re.compile(r"^(bool|int|float|str|none)$|[\[\]]|^(function|constrained)-")


def format_errors(exc: ValidationError, model: type[BaseModel], source: str, what: str = "config",
                  sections: dict[str, type[BaseModel]] | None = None) -> str:
    """One line per problem of a run config or a study spec (``what``): an unknown key with the
    closest valid one, else the location and pydantic's message (one line when every member of a
    union failed)."""
    lines: list[str] = []
    by_loc: dict[tuple, list[dict]] = {}
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and _NOT_A_KEY.search(p)))
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {_where(loc)!r}{did_you_mean(loc[-1], _valid_keys(model, loc, sections))}")
        else:
            by_loc.setdefault(loc, []).append(err)
    for loc, errs in by_loc.items():
        err = errs[0]
        if len(errs) > 1:  # every member of a union failed: one line, not one per member
            lines.append(f"{_where(loc)}: value {err.get('input')!r} has none of the allowed types")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{_where(loc)}: {msg}" + ("" if err["type"] == "value_error" else f" (got {err.get('input')!r})"))
    return f"invalid {what} {source}:\n  " + "\n  ".join(lines)


def _format_errors(exc: ValidationError, raw: dict[str, Any], source: str) -> str:
    """A run config's errors; keys under ``method`` are checked against the named method's own config."""
    method = raw.get("method") if isinstance(raw, dict) else None
    name = method.get("name") if isinstance(method, dict) else None
    mc = METHODS.find(name) if isinstance(name, str) else None
    return format_errors(exc, RunConfig, source, "config", {"method": mc.config_cls} if mc else None)


def parse_value(text: str) -> Any:
    """CLI override values are YAML scalars: 0.1, true, null, [1, 2], name."""
    return yaml.safe_load(text)


def set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        cur = nxt
    cur[keys[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for k, v in overrides.items():
        set_dotted(out, k, v)
    return out


BACKBONE_DEFAULTS = Path(__file__).parent / "defaults" / "backbones.yaml"


def backbone_defaults(backbone: str, method: str, path: Path = BACKBONE_DEFAULTS) -> dict[str, dict[str, Any]]:
    """{dotted key: {value, source}} shipped for this backbone and method (empty when none)."""
    table = yaml.safe_load(path.read_text()) if path.is_file() else None
    entries = ((table or {}).get(backbone) or {}).get(method) or {}
    for key, e in entries.items():
        if not (isinstance(e, dict) and "value" in e and e.get("source")):
            raise ConfigError(f"{path}: {backbone}.{method}.{key} needs a 'value' and a 'source'")
    return entries


def apply_backbone_defaults(raw: dict[str, Any], path: Path = BACKBONE_DEFAULTS) -> dict[str, Any]:
    """Fill the method fields the config leaves unset with the backbone's shipped defaults.

    A field the config sets (even to the class default) is never touched. Every applied value is
    recorded as a tag ``default.<dotted key>: "<value> (<source>)"``, so the resolved config written
    with the run, and MLflow's tags, say what was applied and where it came from. Idempotent: a
    resolved config sets every field, so applying again changes nothing.
    """
    bb = (raw.get("backbone") or {}).get("name", BackboneConfig().name)
    method = (raw.get("method") or {}).get("name") if isinstance(raw.get("method"), dict) else None
    missing = object()
    todo = {}
    for k, e in backbone_defaults(str(bb), str(method), path).items():
        cur: Any = raw
        for part in k.split("."):
            cur = cur.get(part, missing) if isinstance(cur, dict) else missing
        if cur is missing:
            todo[k] = e
    if not todo:
        return raw
    try:  # missing sub-sections start from the method's own resolved defaults, not the class's
        resolved = RunConfig.model_validate(raw).to_dict()
    except ValidationError:
        return raw  # validation reports the config's own error
    out = copy.deepcopy(raw)
    tags = dict(out.get("tags") or {})
    for k, e in todo.items():
        *parents, last = k.split(".")
        cur, res = out, resolved
        for p in parents:
            if p not in cur:
                cur[p] = copy.deepcopy(res[p])
            cur, res = cur[p], res[p]
        cur[last] = e["value"]
        tags[f"default.{k}"] = f"{e['value']} ({e['source']})"
    out["tags"] = tags
    return out


def validate_config(raw: dict[str, Any], source: str = "<dict>") -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping at the top level")
    if "method" not in raw:
        raise ConfigError(f"invalid config {source}: missing required section 'method' "
                          f"(one of: {', '.join(MethodConfig.known())})")
    raw = apply_backbone_defaults(raw)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, raw, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a run config; a sweep/ablation spec is accepted too and its ``base`` is used."""
    raw = read_yaml(path)
    if "base" in raw and "method" not in raw:  # a sweep or ablation spec: rerun its base alone
        raw = raw["base"]
    # compose (not a plain apply_overrides): a dotted key into a section the file leaves out starts
    # from that method's own defaults, not from the generic sub-config defaults
    return validate_config(compose(raw, overrides or {}), str(path))


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ----------------------------------------------------------------------------------------------
# Composing configs: dotted overrides onto a base (pace run --set, sweep and ablation trials)


_MISSING = object()


def get_dotted(d: dict[str, Any], dotted: str, default: Any = None) -> Any:
    cur: Any = d
    for k in dotted.split("."):
        if not isinstance(cur, dict) or k not in cur:
            return default
        cur = cur[k]
    return cur


def compose(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with dotted overrides applied; a method switch (applied first) resets the method section.

    Setting ``method.name`` (or a whole ``method`` mapping) to another method drops the base's
    method-specific fields: they belong to the old method. A dotted key into a section the raw config
    leaves out (``method.analytic.lam`` when only ``method.name`` is given) first fills that section
    with its resolved defaults, so the override changes one field instead of replacing the section's
    method-specific defaults with the class defaults.
    """
    out = copy.deepcopy(base)
    first = [k for k in ("method", "method.name") if k in overrides]
    for key in first + [k for k in overrides if k not in first]:
        value = overrides[key]
        if key == "method.name" and value != get_dotted(out, "method.name"):
            out["method"] = {"name": value}
            continue
        if key == "method" and isinstance(value, dict):
            out["method"] = copy.deepcopy(value)
            continue
        out = apply_overrides(_fill_section(out, key), {key: value})
    return out


def _fill_section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    parts = key.split(".")
    for depth in range(2, len(parts)):  # top-level sections are filled by validation anyway
        section = ".".join(parts[:depth])
        if get_dotted(raw, section, _MISSING) is not _MISSING:
            continue
        try:
            resolved = validate_config(raw).to_dict()
        except ConfigError:
            return raw  # the override itself may be what makes the config valid; leave it as written
        default = get_dotted(resolved, section)
        if isinstance(default, dict):
            return apply_overrides(raw, {section: default})
        return raw
    return raw
