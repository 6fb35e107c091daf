"""``pace tune``: one equal-budget tuning protocol for every method.

A tune file (``sweeps/tune.yaml``) names the backbones, the methods, the benchmark families and the
budget. For each backbone and method, ``pace tune`` runs one study (a ``TuneSpec``: a sweep whose trials run
every benchmark) over the method's **own declared search space** (``SEARCH_SPACE`` beside its config
fields), with the same number of trials, the same seeded TPE sampler and the same ASHA schedule for
every method. A trial runs the benchmarks one after another on their **validation** splits (the
test split never chooses) and reports, after every session, the objective: the mean (or, chosen in
the file, the worst) of the benchmarks' validation last accuracies, counting the benchmark in
progress at its current validation accuracy, so ASHA compares trials at the same point of the same
benchmark order.

The adaptation flags (``adaptation_inert``, ``head_acc_fell``, ``head_acc_unchanged``) are reported per
benchmark beside the outcome and kept out of the objective. The winner's values go to
``pace/defaults/backbones.yaml`` with their provenance (file, study, trials, splits, benchmarks, date,
the runner-up's distance and the flags the winner raised on each benchmark).

Shipped defaults of the method being tuned are not applied inside its own search: every key they would
fill is pinned to the method's class default in the tuning base, so a re-tune starts from the method
as written, not from an earlier search.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from pace.config import (BACKBONE_DEFAULTS, MethodConfig, backbone_defaults, compose, format_errors,
                         get_dotted, read_yaml)
from pace.registry import did_you_mean
from pace.study import SpecError
from pace.study.checks import DataCheck, check_sweep
from pace.study.space import Param
from pace.study.spec import Scheduler, Searcher, StudyRunFields, SweepSpec
from pace.study.tune_trial import FLAGS, INERT_STAGE, OBJECTIVE

#: Optuna's TPE proposes its first trials at random (``n_startup_trials``, 10 by default)
TPE_STARTUP = 10
RANDOM_NOTE = "; at this budget TPE's random start-up trials make it a seeded random search"
#: trials listed after the winner in the summary, with their distance to it
RUNNERS_UP = 3


def method_space(method: str) -> dict[str, Param]:
    """The method's declared search space as dotted run-config keys (``method.`` prefixed)."""
    cls = MethodConfig.config_class(method)
    out = {}
    for key, raw in cls.SEARCH_SPACE.items():
        raw = dict(raw)
        raw["when"] = {f"method.{k}": v for k, v in (raw.get("when") or {}).items()}
        try:
            out[f"method.{key}"] = Param.model_validate(raw)
        except ValidationError as exc:
            raise SpecError(f"{cls.__module__}.{cls.__name__}.SEARCH_SPACE[{key!r}]: "
                            f"{exc.errors()[0]['msg']}") from None
    return out


class TuneSpec(SweepSpec):
    """One method's tuning study: a sweep whose every trial runs all ``benchmarks``."""

    kind: ClassVar[str] = "tune"
    command: ClassVar[str] = "tune"
    option_fields: ClassVar[tuple[str, ...]] = ("max_concurrent", "track")

    objective: str = OBJECTIVE
    #: benchmark name -> dotted data/scenario overrides; a trial runs them in this order
    benchmarks: dict[str, dict[str, Any]] = Field(min_length=1)
    aggregate: Literal["mean", "worst"] = "mean"
    #: the backbone and method tuned, the tune file it came from and the keys pinned to class defaults
    backbone: str
    method: str
    source_file: str
    pinned: dict[str, Any] = Field(default_factory=dict)

    def check(self, source: str, data_check: DataCheck | None = None) -> tuple[dict[str, Any], str]:
        """Every benchmark's probed trial configs validate (and fill their sessions, with data_check)."""
        base, note = self.resolve_base()
        for bench, ovr in self.benchmarks.items():
            per = self.model_copy(update={"base": compose(base, ovr), "backbone_fallback": None})
            check_sweep(per, f"{source} (benchmark {bench})", data_check)
        return base, note

    def trainable(self):
        from pace.study.tune_trial import train_tune_trial

        return train_tune_trial

    def refusal(self) -> str | None:
        """Why the method cannot run on the backbone (a prompt method on a CNN), or None."""
        from pace.config import validate_config
        from pace.study.checks import known_refusals

        bench = next(iter(self.benchmarks.values()))
        found = known_refusals(validate_config(compose(self.resolve_base()[0], bench)))
        return found[0][1] if found else None

    def context_fields(self) -> dict[str, Any]:
        return {"benchmarks": dict(self.benchmarks), "aggregate": self.aggregate}

    def max_sessions(self, base: dict[str, Any]) -> int:
        """ASHA's max_t: the sessions of all benchmarks together (a trial's ``sessions_done`` counts on)."""
        from pace.config import validate_config

        return sum(int(validate_config(compose(base, o)).scenario.num_sessions) for o in self.benchmarks.values())

    def tracking_params(self, base: dict[str, Any]) -> dict[str, Any]:
        return {**super().tracking_params(base), "method": self.method, "aggregate": self.aggregate,
                "benchmarks": ",".join(self.benchmarks), "tune_file": self.source_file}

    def summary_table(self, rows: list[dict[str, Any]]) -> str:
        return tune_table(rows, list(self.benchmarks))

    def summary_lines(self, rows: list[dict[str, Any]]) -> list[str]:
        return outcome_lines(rows, list(self.benchmarks))


class TuneFile(StudyRunFields):
    """``sweeps/tune.yaml``: the protocol, shared by every backbone and method it tunes."""

    #: prefix of each study's name: ``<name>-<backbone>-<method>``
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)
    #: backbone name -> the rest of its section (input length); defaults are written under the name
    backbones: dict[str, dict[str, Any] | None] = Field(min_length=1)
    #: run-config settings every trial shares (runtime, scenario.val_fraction, ...)
    base: dict[str, Any] = Field(default_factory=dict)
    #: method -> dotted overrides that are fixed, not searched (CPU sizing: views, projection width);
    #: a list of names = no fixed overrides
    methods: list[str] | dict[str, dict[str, Any] | None]
    benchmarks: dict[str, dict[str, Any]] = Field(min_length=1)
    aggregate: Literal["mean", "worst"] = "mean"
    #: the budget: trials per method, the same for every method
    trials: int = Field(ge=1)
    searcher: Searcher = Field(default_factory=Searcher)
    scheduler: Scheduler | None = Field(default_factory=lambda: Scheduler(grace_period=2))
    #: data seeds of every tuning run (class order, split, init)
    seed: int = 0

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v):
        names = list(v)
        if not names:
            raise ValueError("methods is empty; list the methods to tune")
        known = MethodConfig.known()
        for n in names:
            if n not in known:
                raise ValueError(f"unknown method {n!r}{did_you_mean(n, known)} (one of: {', '.join(known)})")
        return {n: {} for n in v} if isinstance(v, list) else {k: (o or {}) for k, o in v.items()}

    @field_validator("backbones")
    @classmethod
    def _backbone_sections(cls, v):
        from pace.backbones.registry import get_spec

        out = {}
        for name, section in v.items():
            try:
                get_spec(name)
            except ValueError as exc:
                raise ValueError(f"backbones: {exc}") from None
            section = dict(section or {})
            if "name" in section:
                raise ValueError(f"backbones[{name!r}] sets name; the entry's key is the name")
            out[name] = section
        return out

    def method_spec(self, method: str, source: str, backbone: str | None = None) -> TuneSpec:
        """The study of ``method`` on ``backbone`` (the file's first when None)."""
        backbone = backbone or next(iter(self.backbones))
        if backbone not in self.backbones:
            raise SpecError(f"{source}: backbone {backbone!r} is not in this file's backbones "
                            f"({', '.join(self.backbones)}){did_you_mean(backbone, self.backbones)}")
        if method not in self.methods:
            raise SpecError(f"{source}: method {method!r} is not in this file's methods "
                            f"({', '.join(self.methods)}){did_you_mean(method, self.methods)}")
        search = method_space(method)
        if not search:
            raise SpecError(f"{source}: method {method!r} declares no search space (SEARCH_SPACE); "
                            "there is nothing to tune")
        base = compose(self.base, {"backbone": {"name": backbone, **self.backbones[backbone]},
                                   "method": {"name": method},
                                   "seeds": {"class_order": self.seed, "split": self.seed, "init": self.seed}})
        base = compose(base, self.methods[method] or {})
        pinned = pinned_defaults(backbone, method, set(search), base)
        base = compose(base, pinned)
        name = f"{self.name}-{backbone}-{method}"
        base["name"] = name
        return TuneSpec(name=name, base=base, backbone=backbone, search=search, searcher=self.searcher,
                        scheduler=self.scheduler, num_samples=self.trials, benchmarks=self.benchmarks,
                        aggregate=self.aggregate, method=method, source_file=source, pinned=pinned,
                        **self.run_fields())


def load_tune_file(path: str | Path) -> TuneFile:
    source = str(path)
    raw = read_yaml(path)
    try:
        return TuneFile.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(format_errors(exc, TuneFile, source, "tune file")) from None


def pinned_defaults(backbone: str, method: str, searched: set[str], base: dict[str, Any],
                    path: Path = BACKBONE_DEFAULTS) -> dict[str, Any]:
    """The keys shipped defaults would fill in a tuning trial, pinned to the method's class defaults
    (a searched key is set by the trial; a key the base sets is kept)."""
    cls_defaults = {"method": MethodConfig.config_class(method)().model_dump(mode="json")}
    missing = object()
    return {key: get_dotted(cls_defaults, key) for key in backbone_defaults(backbone, method, path)
            if key not in searched and get_dotted(base, key, missing) is missing}


# ---------------------------------------------------------------------------------------------
# The outcome


def _bench_metric(row: dict[str, Any], bench: str, what: str) -> Any:
    return (row.get("result") or {}).get(f"{what}.{bench}")


def flags_of(row: dict[str, Any], benches: list[str]) -> dict[str, list[str]]:
    """benchmark -> the flags the trial raised there (empty lists left out); an inert flag names the
    stage, its sessions and their learner time, e.g. ``adaptation_inert (msa: 2 sessions, 11.4 s)``."""
    out = {}
    for b in benches:
        raised = []
        for f in FLAGS:
            if _bench_metric(row, b, f) != 1.0:
                continue
            stages = INERT_STAGE.findall(str(_bench_metric(row, b, "inert") or "")) if f == "adaptation_inert" else []
            raised.append(f + (" (" + "; ".join(f"{st}: {n} sessions, {s} s" for st, n, s in stages) + ")"
                               if stages else ""))
        if raised:
            out[b] = raised
    return out


def _finished(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("objective") is not None and r.get("status") == "finished"]


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished trials by objective, best first; equals keep trial order (the earliest wins a tie)."""
    return sorted(_finished(rows), key=lambda r: -r["objective"])


def tune_table(rows: list[dict[str, Any]], benches: list[str]) -> str:
    from pace.console import table
    from pace.study.summary import describe

    body = []
    for r in rows:
        flags = flags_of(r, benches)
        body.append([r["trial"], describe(r), r["status"], r["sessions"],
                     *[_bench_metric(r, b, "val") for b in benches], r.get("objective"),
                     "; ".join(f"{b}: {', '.join(f)}" for b, f in flags.items()) or "-"])
    return table(body, ["trial", "params", "status", "sessions", *[f"val {b}" for b in benches],
                        OBJECTIVE, "flags (not in the objective)"])


def outcome_lines(rows: list[dict[str, Any]], benches: list[str]) -> list[str]:
    """The winner, how far the runners-up are, and the flags the winner raised."""
    from pace.console import fmt
    from pace.study.summary import describe

    order = ranked(rows)
    if not order:
        return ["best trial: none (no trial finished every benchmark)"]
    best = order[0]
    lines = [f"best trial: {best['trial']} ({OBJECTIVE} {fmt(best['objective'])}): {describe(best)}"]
    for r in order[1:1 + RUNNERS_UP]:
        lines.append(f"  runner-up {r['trial']}: {fmt(r['objective'] - best['objective'])} points "
                     f"({describe(r)})")
    flags = flags_of(best, benches)
    if flags:
        lines.append("  the winner is flagged (described, not ranked): "
                     + "; ".join(f"{b}: {', '.join(f)}" for b, f in flags.items()))
    return lines


def provenance(spec: TuneSpec, rows: list[dict[str, Any]], study_id: str | None, date: str | None = None) -> str:
    """The ``source`` of every value the winner writes: protocol, budget, splits, benchmarks, date,
    the winner's and runner-up's objectives and the winner's flags."""
    from pace.console import fmt

    order = ranked(rows)
    best = order[0]
    date = date or _dt.date.today().isoformat()
    sched = (f"ASHA grace {spec.scheduler.grace_period} reduction {spec.scheduler.reduction_factor:g} over "
             f"sessions" if spec.scheduler else "no early stopping")
    per = ", ".join(f"{b} {fmt(_bench_metric(best, b, 'val'))}" for b in spec.benchmarks)
    text = (f"pace tune {spec.source_file} --backbone {spec.backbone} (study {spec.name}"
            + (f", MLflow parent run {study_id}" if study_id else "")
            + f"), {date}: Optuna TPE seed {spec.searcher.seed}, {spec.samples} trials (the budget of every "
            f"method in the file{RANDOM_NOTE if spec.samples <= TPE_STARTUP else ''}), {sched}; "
            f"objective the {spec.aggregate} of val_last_accuracy on the "
            f"VALIDATION splits of {', '.join(spec.benchmarks)} (the test split does not choose): best trial "
            f"{best['trial']} {fmt(best['objective'])} ({per})")
    if len(order) > 1:
        text += f"; runner-up {order[1]['trial']} {fmt(order[1]['objective'] - best['objective'])} points"
    flags = flags_of(best, list(spec.benchmarks))
    if flags:
        text += "; flagged on " + "; ".join(f"{b}: {', '.join(f)}" for b, f in flags.items())
    return text


def winning_values(spec: TuneSpec, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The searched values of the best finished trial (only the keys it sampled)."""
    order = ranked(rows)
    if not order:
        raise SpecError(f"study {spec.name}: no trial finished every benchmark; nothing to write")
    return {k: v for k, v in order[0]["params"].items() if k in spec.search}


DEFAULTS_HEADER = """\
# Per-backbone method defaults. `pace run`, sweeps and ablations apply an entry when the run config
# leaves that field unset (an explicit value always wins); the resolved config.yaml of the run and its
# MLflow tags carry `default.<key>: "<value> (<source>)"`.
#
# backbone name -> method name -> dotted config key -> {value, source}. `source` says where the value
# comes from: the protocol (`pace tune`, pace/study/tune.py), the budget, the validation splits and
# benchmarks it was measured on, the date, the runner-up's distance and the flags the winner raised.
# A method's entry is replaced whole by `pace tune` (rewritten by it; edits by hand are kept only
# until the next tune of that backbone and method).
"""


def write_defaults(path: Path, backbone: str, method: str, values: dict[str, Any], source: str) -> None:
    """Replace ``backbone.method`` in the defaults file with ``values``, each with ``source``; every
    other entry is kept. Written to a temporary file and renamed, so a crash leaves the old file."""
    table = (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}
    if not isinstance(table, dict):
        raise SpecError(f"{path}: expected a mapping backbone -> method -> key at the top level")
    entry = {k: {"value": _plain(v), "source": source} for k, v in values.items()}
    table.setdefault(backbone, {})[method] = entry
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(DEFAULTS_HEADER + yaml.dump(table, Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True))
    tmp.replace(path)


class _Dumper(yaml.SafeDumper):
    """Long strings (the sources) as folded blocks, so the file reads like the hand-written one."""


_Dumper.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v,
                                                             style=">" if len(v) > 80 else None))


def _plain(v: Any) -> Any:
    """Floats to 4 significant digits (the search's resolution is far coarser), the rest as is."""
    if isinstance(v, float) and math.isfinite(v):
        return float(f"{v:.4g}")
    return v
