"""The spec models of sweeps and ablations: typed, validated up front, turned into per-trial overrides.

A **sweep** spec (``pace sweep FILE``) searches a space of dotted config keys with Optuna (TPE or
random) or a grid; an **ablation** spec (``pace ablate FILE``) runs the grid variants x benchmarks x
backbones x seeds. Both carry a ``base`` run config. Every problem is reported before any trial
starts (pace.study.checks).

Everything that differs between the two is behaviour of these classes: which command runs them, the
trials they define, how Tune searches and schedules them, what tracking records about them and how
their summary ends. Overrides are applied with ``pace.config.compose``.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator

from pace.config import Strict, compose, format_errors, get_dotted, read_yaml, validate_config
from pace.study import SpecError
from pace.study.checks import DataCheck, check_ablation, check_sweep
from pace.study.exclusions import AXES, exclusion_values, show_exclusion
from pace.registry import did_you_mean
from pace.study.space import Param, SearchSpace

#: metrics every trial reports after each session (see pace.study.trial.trial_metrics); objectives are one of these
REPORTED_METRICS = (
    "val_last_accuracy", "val_average_incremental_accuracy", "val_acc_all", "val_acc_new",
    "last_accuracy", "average_incremental_accuracy", "forgetting", "bwt", "plasticity", "stability",
    "acc_all", "acc_new", "acc_old", "time_s", "peak_mem_mb",
    "val_objective",  # pace tune's trials: the mean or worst validation accuracy over benchmarks
)


class Searcher(Strict):
    type: Literal["optuna", "random", "grid"] = "optuna"
    #: sampler seed: the same seed proposes the same configs (strictly so with max_concurrent 1)
    seed: int = 0


class Scheduler(Strict):
    """ASHA on the per-session reports: ``grace_period`` sessions before a trial may be stopped."""

    type: Literal["asha"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)


class Resources(Strict):
    cpu: float = Field(1.0, gt=0)
    #: fractional GPUs share one device (Ray only does the bookkeeping)
    gpu: float = Field(0.0, ge=0)


class BackboneCandidate(Strict):
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


class StudyRunFields(Strict):
    """Where and how a study's trials run and are recorded: every spec's fields, and a tune file's
    (pace.study.tune), which hands them to each method's study."""

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

    def run_fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in StudyRunFields.model_fields}


class StudySpec(StudyRunFields):
    """What sweeps and ablations share; subclasses say how their trials are made and summarised.

    Strict (pace.config) keeps the values a default model presets for a partially given section; no
    spec field defaults to a model with preset values, so for specs it only forbids unknown keys."""

    #: the study's kind: saved in pace_study.json, and the MLflow tag ``pace.kind`` on the parent run
    kind: ClassVar[str]
    #: the ``pace`` subcommand that runs this kind (pace.study.cli registers it under this name)
    command: ClassVar[str]
    #: the summary table's column that describes a trial
    label_column: ClassVar[str]
    #: command-line options (StudyOptions fields) that override the spec field of the same name
    option_fields: ClassVar[tuple[str, ...]] = ("max_concurrent", "track")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=120)
    base: dict[str, Any]
    #: first usable backbone replaces base.backbone.name (e.g. a pretrained one if installed, else a fallback)
    backbone_fallback: list[BackboneCandidate] | None = None
    objective: str = "val_last_accuracy"
    mode: Literal["max", "min"] = "max"

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, v: str) -> str:
        if v not in REPORTED_METRICS:
            raise ValueError(f"unknown objective {v!r}{did_you_mean(v, REPORTED_METRICS)} "
                             f"(one of: {', '.join(REPORTED_METRICS)})")
        return v

    # -- loading
    def resolve_base(self) -> tuple[dict[str, Any], str]:
        """The base with the backbone fallback applied, and a line saying which backbone and why."""
        return resolve_backbone(self.base, self.backbone_fallback)

    def check(self, source: str, data_check: DataCheck | None = None) -> tuple[dict[str, Any], str]:
        """(resolved base, backbone note); raises SpecError on anything that would fail a trial."""
        raise NotImplementedError

    def option_updates(self, opts: Any) -> dict[str, Any]:
        """The spec fields the command line sets (``opts``: a StudyOptions)."""
        return {k: getattr(opts, k) for k in self.option_fields if getattr(opts, k, None) is not None}

    # -- the trials and how Tune runs them
    def trials(self, base: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The fixed trials ({"overrides", "labels"}) in a stable order; None when they are sampled."""
        raise NotImplementedError

    @property
    def repeats(self) -> int:
        """Tune's ``num_samples``: samples drawn, or repeats of the fixed trials."""
        return 1

    def search_algorithm(self, base: dict[str, Any]) -> Any:
        """Tune's searcher for sampled trials (None: Tune walks the fixed trials)."""
        return None

    @property
    def journals_decisions(self) -> bool:
        """Whether a scheduler journals its decisions in the experiment folder (needs a path there)."""
        return False

    def trial_scheduler(self, base: dict[str, Any], exp_path: str) -> Any:
        return None

    def param_space(self, base: dict[str, Any]) -> dict[str, Any]:
        trials = self.trials(base)
        if trials is None:
            return {}
        from ray import tune

        return {"trial": tune.grid_search(trials)}

    def trainable(self):
        """The Tune function trainable of this kind's trials (``config, ctx`` -> None)."""
        from pace.study.trial import train_trial

        return train_trial

    def context_fields(self) -> dict[str, Any]:
        """``TrialContext`` fields beyond the ones every study sets."""
        return {}

    # -- tracking and summary
    def summary_table(self, rows: list[dict[str, Any]]) -> str:
        from pace.study.summary import summary_table

        return summary_table(rows, self.label_column, self.objective)

    def tracking_params(self, base: dict[str, Any]) -> dict[str, Any]:
        """Params of the parent run beyond the ones every study logs."""
        return {}

    def summary_lines(self, rows: list[dict[str, Any]]) -> list[str]:
        """What the printed summary adds after the trial table."""
        return []


class SweepSpec(StudySpec):
    kind: ClassVar[str] = "sweep"
    command: ClassVar[str] = "sweep"
    label_column: ClassVar[str] = "params"
    option_fields: ClassVar[tuple[str, ...]] = (*StudySpec.option_fields, "num_samples")

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

    def check(self, source: str, data_check: DataCheck | None = None) -> tuple[dict[str, Any], str]:
        return check_sweep(self, source, data_check)

    def trials(self, base: dict[str, Any]) -> list[dict[str, Any]] | None:
        if self.searcher.type != "grid":
            return None
        return [{"overrides": g, "labels": {}} for g in SearchSpace(self.search, base).grid()]

    @property
    def repeats(self) -> int:
        return self.samples

    def search_algorithm(self, base: dict[str, Any]) -> Any:
        if self.searcher.type == "grid":
            return None
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        # seed the sampler itself: OptunaSearch ignores seed= when a sampler is given
        sampler = (optuna.samplers.TPESampler(seed=self.searcher.seed) if self.searcher.type == "optuna"
                   else optuna.samplers.RandomSampler(seed=self.searcher.seed))
        return OptunaSearch(space=SearchSpace(self.search, base), metric=self.objective, mode=self.mode,
                            sampler=sampler)

    @property
    def journals_decisions(self) -> bool:
        return self.scheduler is not None

    def trial_scheduler(self, base: dict[str, Any], exp_path: str) -> Any:
        if self.scheduler is None:
            return None
        from pace.schedulers import JOURNAL_FILE, JournaledASHA
        from pace.study.trial import SESSIONS_DONE

        return JournaledASHA(f"{exp_path}/{JOURNAL_FILE}", time_attr=SESSIONS_DONE,
                             max_t=self.max_sessions(base), grace_period=self.scheduler.grace_period,
                             reduction_factor=self.scheduler.reduction_factor)

    def max_sessions(self, base: dict[str, Any]) -> int:
        """The most sessions any trial runs (ASHA's max_t): the base's, or the largest searched."""
        n = int(validate_config(base).scenario.num_sessions)
        p = self.search.get("scenario.num_sessions")
        if p is not None:
            n = int(max(p.values) if p.type == "categorical" else p.high)
        return n

    def tracking_params(self, base: dict[str, Any]) -> dict[str, Any]:
        return {"searcher": self.searcher.type, "seed": self.searcher.seed, "num_samples": self.samples}

    def summary_lines(self, rows: list[dict[str, Any]]) -> list[str]:
        from pace.console import best_trial_line
        from pace.study.summary import describe

        return [best_trial_line(rows, self.objective, self.mode, describe)]


#: the labels a trial carries, one per axis of an ablation; an ``exclude`` entry matches on these
class AblationSpec(StudySpec):
    kind: ClassVar[str] = "ablation"
    command: ClassVar[str] = "ablate"
    label_column: ClassVar[str] = "variant"

    objective: str = "last_accuracy"
    #: variant name -> dotted overrides (at least one; use {} for "the base as is")
    variants: dict[str, dict[str, Any]] = Field(min_length=1)
    #: benchmark name -> dotted overrides (a data/scenario preset); none = the base's data
    benchmarks: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"base": {}})
    #: backbones to cross with everything else: a list of names, or name -> dotted overrides that go
    #: with that backbone (its input length, batch size, ...); none = the base's backbone
    backbones: list[str] | dict[str, dict[str, Any]] | None = None
    #: each seed sets seeds.class_order, seeds.split and seeds.init together
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    #: combinations not to run: each entry maps axis labels (variant, benchmark, backbone, seed; a value
    #: or a list of values) to match, plus ``why``; a trial matching every label of an entry is left out
    exclude: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("variants", "benchmarks")
    @classmethod
    def _safe_labels(cls, v: dict) -> dict:
        for label in v:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", str(label)):
                raise ValueError(f"name {label!r}: use letters, digits and _ . + - (it names trial folders)")
        return v

    @field_validator("backbones", mode="before")
    @classmethod
    def _bare_backbone_names(cls, v: Any) -> Any:
        # ``crepe-tiny:`` with nothing after it in a mapping: the backbone with no overrides
        return {k: ({} if o is None else o) for k, o in v.items()} if isinstance(v, dict) else v

    @field_validator("backbones")
    @classmethod
    def _backbone_entries(cls, v: list[str] | dict[str, dict[str, Any]] | None):
        if v is None:
            return v
        if not v:
            raise ValueError("backbones is empty; leave it out to use the base's backbone")
        names = list(v)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"backbone {dup[0]!r} is listed twice")
        for name, ovr in (v.items() if isinstance(v, dict) else ()):
            # the axis names the backbone; an entry that renamed it would label trials wrongly
            if "backbone.name" in ovr or "name" in (ovr.get("backbone") or {}):
                raise ValueError(f"backbones[{name!r}] sets backbone.name; the entry's key is the name")
        return v

    @field_validator("exclude")
    @classmethod
    def _exclusion_entries(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, entry in enumerate(v):
            unknown = [k for k in entry if k not in (*AXES, "why")]
            if unknown:
                raise ValueError(f"exclude[{i}]: unknown axis {unknown[0]!r}{did_you_mean(unknown[0], AXES)} "
                                 f"(valid: {', '.join(AXES)}, plus 'why')")
            if not isinstance(entry.get("why"), str) or not entry["why"].strip():
                raise ValueError(f"exclude[{i}] {show_exclusion(entry)}: needs 'why', a sentence saying why these "
                                 "combinations do not apply")
            if not any(k in entry for k in AXES):
                raise ValueError(f"exclude[{i}]: names no axis ({', '.join(AXES)}); it would remove every trial")
        return v

    def check(self, source: str, data_check: DataCheck | None = None,
              check_configs: bool = True) -> tuple[dict[str, Any], str]:
        return check_ablation(self, source, check_configs, data_check)

    @property
    def backbone_overrides(self) -> dict[str, dict[str, Any]] | None:
        """The backbone axis as name -> overrides (the list form: no overrides); None without an axis."""
        if self.backbones is None:
            return None
        return dict(self.backbones) if isinstance(self.backbones, dict) else {b: {} for b in self.backbones}

    def grid(self, base: dict[str, Any]) -> list[dict[str, Any]]:
        """Every combination of the axes, excluded ones included, in a stable order: benchmark,
        backbone, variant, seed.

        Overrides are layered benchmark, then backbone, then variant (a later layer wins on a key
        both set): a backbone's settings are what that model needs on any data (its input length
        replaces a benchmark's), and the variant is what the study compares, so it wins over both."""
        axis = self.backbone_overrides
        backbones = axis or {get_dotted(base, "backbone.name", "logmel-stats"): {}}
        trials = []
        for (bench, bench_ovr), (backbone, bb_ovr), (variant, var_ovr), seed in itertools.product(
                self.benchmarks.items(), backbones.items(), self.variants.items(), self.seeds):
            if isinstance(bb_ovr.get("backbone"), dict):  # a whole section: it keeps the axis's name
                bb_ovr = {**bb_ovr, "backbone": {**bb_ovr["backbone"], "name": backbone}}
            layers = [bench_ovr, {"backbone.name": backbone} if axis else {}, bb_ovr, var_ovr,
                      {"seeds.class_order": seed, "seeds.split": seed, "seeds.init": seed}]
            overrides: dict[str, Any] = {}
            for layer in layers:
                for k, v in layer.items():
                    # re-insert: compose applies keys in insertion order, so a later layer's key must
                    # also come later (a dict update would keep the earlier layer's position)
                    overrides.pop(k, None)
                    overrides[k] = v
            trials.append({"overrides": overrides,
                           "labels": {"variant": variant, "benchmark": bench, "backbone": backbone,
                                      "seed": str(seed)}})
        return trials

    def _matches(self, entry: dict[str, Any], labels: dict[str, str]) -> bool:
        return all(labels.get(k) in exclusion_values(v) for k, v in entry.items() if k in AXES)

    def excluded_by(self, labels: dict[str, str]) -> bool:
        """Whether any ``exclude`` entry matches a trial's labels."""
        return any(self._matches(e, labels) for e in self.exclude)

    def exclusions(self, base: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
        """Each ``exclude`` entry with the number of trials it matches (entries may overlap)."""
        grid = self.grid(base)
        return [(e, sum(self._matches(e, t["labels"]) for t in grid)) for e in self.exclude]

    def exclusion_lines(self, base: dict[str, Any]) -> list[str]:
        """One line per ``exclude`` entry: what it matches, the trials it removes, and why."""
        return [f"excluded {show_exclusion(e, with_why=False)}: {n} trial{'s' if n != 1 else ''} ({e['why'].strip()})"
                for e, n in self.exclusions(base)]

    def trials(self, base: dict[str, Any]) -> list[dict[str, Any]]:
        """The grid in a stable order (benchmark, backbone, variant, seed) without excluded trials."""
        return [t for t in self.grid(base) if not self.excluded_by(t["labels"])]

    def tracking_params(self, base: dict[str, Any]) -> dict[str, Any]:
        return {"num_trials": len(self.trials(base))}

    def summary_lines(self, rows: list[dict[str, Any]]) -> list[str]:
        from pace.study.summary import aggregate_table

        agg = aggregate_table(rows)
        return ["\nmean ± std over seeds:\n" + agg] if agg else []


#: spec classes by kind (the ``kind`` saved with a study and tagged on its parent run)
SPEC_TYPES: dict[str, type[StudySpec]] = {t.kind: t for t in (SweepSpec, AblationSpec)}


def spec_type(kind: str) -> type[StudySpec]:
    try:
        return SPEC_TYPES[kind]
    except KeyError:
        raise ValueError(f"unknown study kind {kind!r} (one of: {', '.join(SPEC_TYPES)})") from None


# ---------------------------------------------------------------------------------------------
# Loading


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


def parse(model: type[StudySpec], raw: dict[str, Any], source: str) -> StudySpec:
    if "base" not in raw:
        raise SpecError(f"invalid spec {source}: missing 'base' (a run config mapping)")
    if not isinstance(raw.get("base"), dict):
        raise SpecError(f"invalid spec {source}: 'base' must be a mapping (a run config)")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(format_errors(exc, model, source, "spec")) from None


def load_spec(model: type[StudySpec], path: str | Path, check_data: bool = False,
              **check: Any) -> tuple[StudySpec, dict[str, Any], str]:
    """(spec, resolved base, backbone note); raises SpecError on anything that would fail a trial
    (with ``check_data``, also what only the data can tell, e.g. classes that do not fill the sessions)."""
    source = str(path)
    spec = parse(model, read_yaml(path), source)
    return (spec, *spec.check(source, DataCheck() if check_data else None, **check))


def load_sweep_spec(path: str | Path, check_data: bool = False) -> tuple[SweepSpec, dict[str, Any], str]:
    return load_spec(SweepSpec, path, check_data)


def load_ablation_spec(path: str | Path, check_configs: bool = True, check_data: bool = False
                       ) -> tuple[AblationSpec, dict[str, Any], str, list[dict[str, Any]]]:
    """(spec, resolved base, backbone note, trials); each trial is {"overrides", "labels"}."""
    spec, base, note = load_spec(AblationSpec, path, check_data, check_configs=check_configs)
    return spec, base, note, spec.trials(base)
