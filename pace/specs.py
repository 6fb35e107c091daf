"""Sweep and ablation specs: typed, validated up front, turned into per-trial config overrides.

A **sweep** spec (``pace sweep FILE``) searches a space of dotted config keys with Optuna (TPE or
random) or a grid; an **ablation** spec (``pace ablate FILE``) runs the grid variants x benchmarks x
backbones x seeds. Both carry a ``base`` run config. Every problem is reported before any trial
starts: unknown keys (with the closest valid key), bad ranges, conditions on keys that are never
set, and any trial config that ``pace.config.validate_config`` would reject (the grid is enumerated in
full; a searched space is probed at every bound and categorical value plus a seeded random sample).

Override semantics (``compose``): dotted keys are applied in order onto ``base``. Setting
``method.name`` (or a whole ``method`` mapping) to another method drops the base's method-specific
fields, because they belong to the old method.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import itertools
import math
import random
import re
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pace.config import ConfigError, RunConfig, apply_overrides, read_yaml, validate_config

#: metrics every trial reports after each session (see pace.sweep.trial_metrics); objectives are one of these
REPORTED_METRICS = (
    "val_last_accuracy", "val_average_incremental_accuracy", "val_acc_all", "val_acc_new",
    "last_accuracy", "average_incremental_accuracy", "forgetting", "bwt", "plasticity", "stability",
    "acc_all", "acc_new", "acc_old", "time_s", "peak_mem_mb",
)
#: probes per searched space in the up-front check (a seeded random sample of the define-by-run space)
RANDOM_PROBES = 64
#: refuse to enumerate grids larger than this (a typo in a step, most likely)
MAX_GRID = 20_000


_MISSING = object()


class SpecError(ConfigError):
    """A sweep/ablation spec that cannot run; raised before any trial starts."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------
# Spec models


Scalar = bool | int | float | str | None


class Param(_Strict):
    """One searched key. ``when`` makes it conditional: it is only sampled (and set) when every listed
    key has the given value (or one of the listed values)."""

    type: Literal["float", "log", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    values: list[Scalar] | None = None
    step: float | None = None
    when: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_range(self) -> "Param":
        if self.type == "categorical":
            if not self.values:
                raise ValueError("categorical needs a non-empty 'values' list")
            if self.low is not None or self.high is not None or self.step is not None:
                raise ValueError("categorical takes 'values', not low/high/step")
            if len(set(map(repr, self.values))) != len(self.values):
                raise ValueError(f"categorical values repeat: {self.values}")
            return self
        if self.values is not None:
            raise ValueError(f"{self.type} takes low/high (use type: categorical for a list of values)")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs both 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be < high ({self.high:g})")
        if self.type == "log":
            if self.low <= 0:
                raise ValueError(f"log needs low > 0 (got {self.low:g})")
            if self.step is not None:
                raise ValueError("log does not take a step (Optuna samples log ranges continuously)")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"int needs integer bounds (got {self.low:g}, {self.high:g})")
        if self.step is not None:
            if self.step <= 0:
                raise ValueError(f"step must be > 0 (got {self.step:g})")
            if self.type == "int" and self.step != int(self.step):
                raise ValueError(f"int needs an integer step (got {self.step:g})")
        return self

    def grid_values(self, key: str) -> list[Any]:
        if self.type == "categorical":
            return list(self.values)
        if self.type == "log" or (self.type == "float" and self.step is None):
            raise SpecError(f"search[{key!r}]: a grid needs finite values; use type: categorical, "
                            "or a float/int with a step")
        step = self.step or 1
        n = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        vals = [self.low + i * step for i in range(n)]
        return [int(round(v)) for v in vals] if self.type == "int" else [round(v, 12) for v in vals]

    def probe_values(self) -> list[Any]:
        """Bounds (and the middle) or every categorical value: what the up-front check validates."""
        if self.type == "categorical":
            return list(self.values)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        mid = math.sqrt(self.low * self.high) if self.type == "log" else (self.low + self.high) / 2
        return [self.low, mid, self.high]

    def suggest(self, trial: Any, key: str) -> Any:
        """Sample through an Optuna-style trial (Optuna's own, Ray's captor, or ``_RandomTrial``)."""
        if self.type == "categorical":
            return trial.suggest_categorical(key, list(self.values))
        if self.type == "int":
            return trial.suggest_int(key, int(self.low), int(self.high), step=int(self.step or 1))
        if self.type == "log":
            return trial.suggest_float(key, self.low, self.high, log=True)
        return trial.suggest_float(key, self.low, self.high, step=self.step)


class Searcher(_Strict):
    type: Literal["optuna", "random", "grid"] = "optuna"
    #: sampler seed: the same seed proposes the same configs (strictly so with max_concurrent 1)
    seed: int = 0


class Scheduler(_Strict):
    """ASHA on the per-session reports: ``grace_period`` sessions before a trial may be stopped."""

    type: Literal["asha"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    #: fractional GPUs share one device (Ray only does the bookkeeping)
    gpu: float = Field(0.0, ge=0)


class BackboneCandidate(_Strict):
    """One entry of ``backbone_fallback``: used when its name is registered and ``requires`` imports.

    The chosen candidate replaces the base's whole ``backbone`` section (input-length fields differ
    between backbones), then applies ``set``."""

    name: str
    #: Python modules that must be importable (e.g. the package holding the weights)
    requires: list[str] = Field(default_factory=list)
    #: the other fields of the backbone section for this backbone (target_frames, seconds, ...)
    backbone: dict[str, Any] = Field(default_factory=dict)
    #: further dotted overrides that go with this backbone (batch sizes, ...)
    set: dict[str, Any] = Field(default_factory=dict)


class _Common(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=120)
    base: dict[str, Any]
    #: first usable backbone replaces base.backbone.name (e.g. a pretrained one if installed, else a fallback)
    backbone_fallback: list[BackboneCandidate] | None = None
    objective: str = "val_last_accuracy"
    mode: Literal["max", "min"] = "max"
    max_concurrent: int | None = Field(None, ge=1)
    resources: Resources = Field(default_factory=Resources)
    #: Tune results and checkpoints (a shared path or s3:// URI on a cluster); default ./ray_results
    storage_path: str | None = None
    #: MLflow tracking URI; default sqlite:///<cwd>/mlflow.db
    tracking_uri: str | None = None
    #: log to MLflow at all (off: Tune results only; used to measure tracking overhead)
    track: bool = True
    #: retries of a failed trial from its last session checkpoint (-1 = unlimited)
    max_failures: int = Field(1, ge=-1)

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, v: str) -> str:
        if v not in REPORTED_METRICS:
            close = difflib.get_close_matches(v, REPORTED_METRICS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown objective {v!r}{hint} (one of: {', '.join(REPORTED_METRICS)})")
        return v


class SweepSpec(_Common):
    search: dict[str, Param]
    searcher: Searcher = Field(default_factory=Searcher)
    scheduler: Scheduler | None = None
    #: trials to sample (optuna/random, default 8) or repeats of the whole grid (grid, default 1)
    num_samples: int | None = Field(None, ge=1)

    @field_validator("searcher", mode="before")
    @classmethod
    def _searcher_shorthand(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @field_validator("search")
    @classmethod
    def _non_empty(cls, v: dict) -> dict:
        if not v:
            raise ValueError("search is empty; list at least one dotted config key to search")
        return v

    @property
    def samples(self) -> int:
        return self.num_samples or (1 if self.searcher.type == "grid" else 8)


class AblationSpec(_Common):
    objective: str = "last_accuracy"
    #: variant name -> dotted overrides (at least one; use {} for "the base as is")
    variants: dict[str, dict[str, Any]] = Field(min_length=1)
    #: benchmark name -> dotted overrides (a data/scenario preset); none = the base's data
    benchmarks: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"base": {}})
    #: backbone names to cross with everything else; none = the base's backbone
    backbones: list[str] | None = None
    #: each seed sets seeds.class_order, seeds.split and seeds.init together
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)

    @field_validator("variants", "benchmarks")
    @classmethod
    def _safe_labels(cls, v: dict) -> dict:
        for label in v:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", str(label)):
                raise ValueError(f"name {label!r}: use letters, digits and _ . + - (it names trial folders)")
        return v


# ---------------------------------------------------------------------------------------------
# Friendly errors


def _field_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model inside an annotation, whether a mapping key sits between the field and that model)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if origin is dict and len(args) == 2:
        inner, _ = _field_model(args[1])
        return inner, True
    if origin is list and args:
        inner, _ = _field_model(args[0])
        return inner, True  # a list index sits between
    for a in args:  # Optional / Union
        inner, mapped = _field_model(a)
        if inner is not None:
            return inner, mapped
    return None, False


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    cur: type[BaseModel] | None = model
    i = 0
    parts = loc[:-1]
    while i < len(parts) and cur is not None:
        field = cur.model_fields.get(str(parts[i]))
        if field is None:
            return []
        cur, mapped = _field_model(field.annotation)
        i += 2 if mapped else 1
    return list(cur.model_fields) if cur is not None and i == len(parts) else []


def _where(loc: tuple) -> str:
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
_NOT_A_KEY = re.compile(r"^(bool|int|float|str|none)$|[\[\]]|^function-")


def _format(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    lines: list[str] = []
    by_loc: dict[tuple, list[dict]] = {}
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and _NOT_A_KEY.search(p)))
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _valid_keys(model, loc), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"unknown key {_where(loc)!r}{hint}")
        else:
            by_loc.setdefault(loc, []).append(err)
    for loc, errs in by_loc.items():
        err = errs[0]
        if len(errs) > 1:  # every member of a union failed: one line, not one per member
            lines.append(f"{_where(loc)}: value {err.get('input')!r} has none of the allowed types")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{_where(loc)}: {msg}" + ("" if err["type"] == "value_error"
                                                 else f" (got {err.get('input')!r})"))
    return f"invalid spec {source}:\n  " + "\n  ".join(lines)


def _parse(model: type[_Common], raw: dict[str, Any], source: str) -> _Common:
    if "base" not in raw:
        raise SpecError(f"invalid spec {source}: missing 'base' (a run config mapping)")
    if not isinstance(raw.get("base"), dict):
        raise SpecError(f"invalid spec {source}: 'base' must be a mapping (a run config)")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_format(exc, model, source)) from None


# ---------------------------------------------------------------------------------------------
# Composing configs


def get_dotted(d: dict[str, Any], dotted: str, default: Any = None) -> Any:
    cur: Any = d
    for k in dotted.split("."):
        if not isinstance(cur, dict) or k not in cur:
            return default
        cur = cur[k]
    return cur


def compose(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with dotted overrides applied; a method switch (applied first) resets the method section.

    A dotted key into a section the raw config leaves out (``method.analytic.lam`` when only
    ``method.name`` is given) first fills that section with its resolved defaults, so the override
    changes one field instead of replacing the section's method-specific defaults with the class defaults.
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


def resolve_backbone(base: dict[str, Any], candidates: list[BackboneCandidate] | None
                     ) -> tuple[dict[str, Any], str]:
    """Base with the first usable candidate backbone, and a line saying which and why."""
    if not candidates:
        return base, f"backbone: {get_dotted(base, 'backbone.name', 'logmel-stats')}"
    from pace.backbones.registry import get_spec

    skipped = []
    for c in candidates:
        try:
            get_spec(c.name)
        except ValueError:
            skipped.append(f"{c.name} (not registered)")
            continue
        missing = [m for m in c.requires if importlib.util.find_spec(m) is None]
        if missing:
            skipped.append(f"{c.name} (needs {', '.join(missing)})")
            continue
        chosen = compose(base, {"backbone": {**c.backbone, "name": c.name}, **c.set})
        why = f"; skipped {', '.join(skipped)}" if skipped else ""
        return chosen, f"backbone: {c.name}" + (" (fallback" + why + ")" if skipped else "")
    raise SpecError("backbone_fallback: no candidate is usable: " + ", ".join(skipped))


# ---------------------------------------------------------------------------------------------
# Search spaces


def _condition_holds(when: dict[str, Any], sampled: dict[str, Any], base: dict[str, Any],
                     defaults: dict[str, Any]) -> bool:
    for key, want in when.items():
        if key in sampled:
            have = sampled[key]
        else:
            have = get_dotted(compose(base, sampled), key, _MISSING)
            have = get_dotted(defaults, key) if have is _MISSING else have
        if isinstance(want, list) and not isinstance(have, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


class SearchSpace:
    """A define-by-run space: ``space(trial)`` samples the params in dependency order.

    Picklable (Tune stores the searcher with the experiment so ``Tuner.restore`` can go on sampling).
    """

    def __init__(self, params: dict[str, Param], base: dict[str, Any]):
        self.params = params
        self.base = base
        #: resolved defaults, for conditions on keys the base leaves unset
        self.defaults = validate_config(base).to_dict()
        self.order = self._order(params)

    @staticmethod
    def _order(params: dict[str, Param]) -> list[str]:
        order: list[str] = []
        pending = dict(params)
        while pending:
            ready = [k for k, p in pending.items() if all(c not in pending for c in p.when)]
            if not ready:
                raise SpecError(f"search: conditions form a cycle among {', '.join(pending)}")
            for k in ready:
                order.append(k)
                del pending[k]
        return order

    def __call__(self, trial: Any) -> None:
        self.sample(trial)
        return None  # Ray's captor records what was suggested, in this order

    def sample(self, trial: Any) -> dict[str, Any]:
        """The overrides one trial gets (in dependency order)."""
        sampled: dict[str, Any] = {}
        for key in self.order:
            p = self.params[key]
            if _condition_holds(p.when, sampled, self.base, self.defaults):
                sampled[key] = p.suggest(trial, key)
        return sampled

    def grid(self) -> list[dict[str, Any]]:
        """Every combination, conditional params expanded only where their condition holds."""
        combos: list[dict[str, Any]] = [{}]
        for key in self.order:
            p = self.params[key]
            values = p.grid_values(key)
            nxt = []
            for c in combos:
                if _condition_holds(p.when, c, self.base, self.defaults):
                    nxt += [{**c, key: v} for v in values]
                else:
                    nxt.append(c)
            combos = nxt
            if len(combos) > MAX_GRID:
                raise SpecError(f"search: the grid has more than {MAX_GRID} points; coarsen the steps")
        return combos


class _RandomTrial:
    """Just enough of Optuna's trial interface to sample a space with a seeded ``random.Random``."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def suggest_categorical(self, name, choices):
        return self.rng.choice(choices)

    def suggest_int(self, name, low, high, step=1):
        return low + step * self.rng.randint(0, (high - low) // step)

    def suggest_float(self, name, low, high, *, step=None, log=False):
        if log:
            return math.exp(self.rng.uniform(math.log(low), math.log(high)))
        if step:
            return low + step * self.rng.randint(0, int(math.floor((high - low) / step + 1e-9)))
        return self.rng.uniform(low, high)


# ---------------------------------------------------------------------------------------------
# Loading and up-front checks


def _check_config(raw: dict[str, Any], what: str, source: str) -> RunConfig:
    try:
        return validate_config(raw, f"{source} ({what})")
    except (ConfigError, ValueError) as exc:
        raise SpecError(str(exc)) from None


def _check_objective(spec: _Common, cfg: RunConfig, what: str, source: str) -> None:
    if spec.objective.startswith("val_") and cfg.scenario.val_fraction <= 0:
        raise SpecError(f"{source}: objective {spec.objective!r} is measured on a validation split carved "
                        f"from training data, but {what} has scenario.val_fraction = "
                        f"{cfg.scenario.val_fraction}; set base.scenario.val_fraction (e.g. 0.2) or choose "
                        "a test metric such as 'last_accuracy'")


def _check_keys_exist(keys: list[str], base: dict[str, Any], source: str, what: str) -> None:
    """A dotted key whose parent is not a section fails in apply_overrides; say which key it was."""
    for key in keys:
        try:
            compose(base, {key: None})
        except ConfigError as exc:
            raise SpecError(f"{source}: {what} {key!r}: {exc}") from None


def _resolved_base(spec: _Common, source: str) -> tuple[dict[str, Any], str]:
    base, note = resolve_backbone(spec.base, spec.backbone_fallback)
    _check_config(base, "base", source)
    return base, note


class DataCheck:
    """Checks the data-dependent part of trial configs (class count vs sessions, clips per class)
    by listing each distinct data set once and laying out its scenario: no audio is decoded.

    A data set that cannot be listed here (not downloaded on this machine) is left to the trial."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, cfg: RunConfig, what: str, source: str) -> None:
        import json

        from pace.data.datasets import build_dataset
        from pace.data.scenario import build_scenario

        d = cfg.to_dict()
        key = json.dumps([d.get("data"), d.get("scenario"), d.get("seeds")], sort_keys=True, default=str)
        if key in self.seen:
            return
        self.seen.add(key)
        try:
            items = build_dataset(cfg.data).items
        except (OSError, ImportError):
            return
        except ValueError as exc:
            raise SpecError(f"{source} ({what}): data: {exc}") from None
        try:
            build_scenario(items, cfg.scenario, cfg.seeds)
        except ValueError as exc:
            raise SpecError(f"{source} ({what}): scenario: {exc}") from None


def load_sweep_spec(path: str | Path, check_data: bool = False) -> tuple[SweepSpec, dict[str, Any], str]:
    """(spec, resolved base, backbone note); raises SpecError on anything that would fail a trial
    (with ``check_data``, also what only the data can tell, e.g. classes that do not fill the sessions)."""
    source = str(path)
    spec = _parse(SweepSpec, read_yaml(path), source)
    return (spec, *check_sweep(spec, source, DataCheck() if check_data else None))


def check_sweep(spec: SweepSpec, source: str = "<spec>", data_check: DataCheck | None = None
                ) -> tuple[dict[str, Any], str]:
    base, note = _resolved_base(spec, source)
    defaults = validate_config(base).to_dict()
    for key, p in spec.search.items():
        for cond in p.when:
            if cond not in spec.search and get_dotted(base, cond, _MISSING) is _MISSING \
                    and get_dotted(defaults, cond, _MISSING) is _MISSING:
                raise SpecError(f"{source}: search[{key!r}].when refers to {cond!r}, which is neither searched "
                                "nor a config key")
    _check_keys_exist(list(spec.search), base, source, "search key")
    _check_objective(spec, validate_config(base), "base", source)
    space = SearchSpace(spec.search, base)
    if spec.searcher.type == "grid":
        points = space.grid()
    else:
        points = _probes(space) + [space.sample(_RandomTrial(random.Random(i))) for i in range(RANDOM_PROBES)]
    seen = set()
    for overrides in points:
        sig = repr(sorted(overrides.items(), key=lambda kv: kv[0]))
        if sig in seen:
            continue
        seen.add(sig)
        what = "trial " + ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        cfg = _check_config(compose(base, overrides), what, source)
        _check_objective(spec, cfg, what if overrides else "base", source)
        if data_check is not None:
            data_check(cfg, what if overrides else "base", source)
    return base, note


def _probes(space: SearchSpace) -> list[dict[str, Any]]:
    """Each param at each probe value, with its conditions (and theirs) made true."""
    out = []
    for key in space.order:
        p = space.params[key]
        for v in p.probe_values():
            forced: dict[str, Any] = {}
            stack = dict(p.when)
            while stack:
                ck, cv = stack.popitem()
                forced[ck] = cv[0] if isinstance(cv, list) else cv
                if ck in space.params:
                    stack.update({k: w for k, w in space.params[ck].when.items() if k not in forced})
            ordered = {k: forced[k] for k in space.order if k in forced}
            ordered.update({k: v for k, v in forced.items() if k not in ordered})
            ordered[key] = v
            out.append(ordered)
    return out


def load_ablation_spec(path: str | Path, check_configs: bool = True, check_data: bool = False
                       ) -> tuple[AblationSpec, dict[str, Any], str, list[dict[str, Any]]]:
    """(spec, resolved base, backbone note, trials); each trial is {"overrides", "labels"}."""
    source = str(path)
    spec = _parse(AblationSpec, read_yaml(path), source)
    return (spec, *check_ablation(spec, source, check_configs, DataCheck() if check_data else None))


def ablation_trials(spec: AblationSpec, base: dict[str, Any]) -> list[dict[str, Any]]:
    """The grid in a stable order: benchmark, backbone, variant, seed."""
    backbones = spec.backbones or [get_dotted(base, "backbone.name", "logmel-stats")]
    trials = []
    for (bench, bench_ovr), backbone, (variant, var_ovr), seed in itertools.product(
            spec.benchmarks.items(), backbones, spec.variants.items(), spec.seeds):
        overrides = {**bench_ovr}
        if spec.backbones:
            overrides["backbone.name"] = backbone
        overrides.update(var_ovr)
        overrides.update({"seeds.class_order": seed, "seeds.split": seed, "seeds.init": seed})
        trials.append({"overrides": overrides,
                       "labels": {"variant": variant, "benchmark": bench, "backbone": backbone,
                                  "seed": str(seed)}})
    return trials


def check_ablation(spec: AblationSpec, source: str = "<spec>", check_configs: bool = True,
                   data_check: DataCheck | None = None) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    if check_configs:
        base, note = _resolved_base(spec, source)
    else:
        base, note = resolve_backbone(spec.base, spec.backbone_fallback)
    for group, entries in (("benchmarks", spec.benchmarks), ("variants", spec.variants)):
        for label, ovr in entries.items():
            _check_keys_exist(list(ovr), base, source, f"{group}[{label!r}] key")
    trials = ablation_trials(spec, base)
    if check_configs:
        for t in trials:
            what = "/".join(f"{k}={v}" for k, v in t["labels"].items())
            cfg = _check_config(compose(base, t["overrides"]), what, source)
            _check_objective(spec, cfg, what, source)
            if data_check is not None:
                data_check(cfg, what, source)
    return base, note, trials
