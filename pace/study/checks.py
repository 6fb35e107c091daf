"""What a spec must pass before Ray starts: every problem is reported before any trial runs.

Unknown keys and bad ranges are the models' job (pace.study.spec); here: conditions on keys that are
never set, keys whose parent is not a section, and any trial config that
``pace.config.validate_config`` would reject (a grid or an ablation is enumerated in full; a searched
space is probed at every bound and categorical value plus a seeded random sample). With a
``DataCheck``, also what only the data can tell (classes that do not fill the sessions).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from pace.config import (BACKBONE_DEFAULTS, ConfigError, MethodConfig, RunConfig, backbone_defaults, compose,
                         get_dotted, validate_config)
from pace.study import SpecError
from pace.study.exclusions import AXES, exclusion_values, show_exclusion
from pace.study.space import SearchSpace

if TYPE_CHECKING:
    from pace.study.spec import AblationSpec, StudySpec, SweepSpec

#: probes per searched space in the up-front check (a seeded random sample of the define-by-run space)
RANDOM_PROBES = 64

_MISSING = object()


def check_config(raw: dict[str, Any], what: str, source: str) -> RunConfig:
    try:
        return validate_config(raw, f"{source} ({what})")
    except (ConfigError, ValueError) as exc:
        raise SpecError(str(exc)) from None


def check_objective(spec: StudySpec, cfg: RunConfig, what: str, source: str) -> None:
    if spec.objective.startswith("val_") and cfg.scenario.val_fraction <= 0:
        raise SpecError(f"{source}: objective {spec.objective!r} is measured on a validation split carved "
                        f"from training data, but {what} has scenario.val_fraction = "
                        f"{cfg.scenario.val_fraction}; set base.scenario.val_fraction (e.g. 0.2) or choose "
                        "a test metric such as 'last_accuracy'")


def check_keys_exist(keys: list[str], base: dict[str, Any], source: str, what: str) -> None:
    """A dotted key whose parent is not a section fails in apply_overrides; say which key it was."""
    for key in keys:
        try:
            compose(base, {key: None})
        except ConfigError as exc:
            raise SpecError(f"{source}: {what} {key!r}: {exc}") from None


def resolved_base(spec: StudySpec, source: str) -> tuple[dict[str, Any], str]:
    base, note = spec.resolve_base()
    check_config(base, "base", source)
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


def check_sweep(spec: SweepSpec, source: str = "<spec>", data_check: DataCheck | None = None
                ) -> tuple[dict[str, Any], str]:
    """(resolved base, backbone note) of a sweep whose every probed trial config validates."""
    base, note = resolved_base(spec, source)
    defaults = validate_config(base).to_dict()
    for key, p in spec.search.items():
        for cond in p.when:
            if cond not in spec.search and get_dotted(base, cond, _MISSING) is _MISSING \
                    and get_dotted(defaults, cond, _MISSING) is _MISSING:
                raise SpecError(f"{source}: search[{key!r}].when refers to {cond!r}, which is neither searched "
                                "nor a config key")
    check_keys_exist(list(spec.search), base, source, "search key")
    check_objective(spec, validate_config(base), "base", source)
    space = SearchSpace(spec.search, base)
    if spec.searcher.type == "grid":
        points = space.grid()
    else:
        points = space.probes() + [space.random_sample(i) for i in range(RANDOM_PROBES)]
    seen = set()
    for overrides in points:
        sig = repr(sorted(overrides.items(), key=lambda kv: kv[0]))
        if sig in seen:
            continue
        seen.add(sig)
        what = "trial " + ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        cfg = check_config(compose(base, overrides), what, source)
        check_objective(spec, cfg, what if overrides else "base", source)
        if data_check is not None:
            data_check(cfg, what if overrides else "base", source)
    return base, note


def check_ablation(spec: AblationSpec, source: str = "<spec>", check_configs: bool = True,
                   data_check: DataCheck | None = None) -> tuple[dict[str, Any], str]:
    """(resolved base, note) of an ablation whose every trial config validates and whose trials no
    learner or backbone is known to refuse. The note says which backbone and, one line each, what the
    ``exclude`` entries leave out and why."""
    base, note = resolved_base(spec, source) if check_configs else spec.resolve_base()
    for group, entries in (("benchmarks", spec.benchmarks), ("backbones", spec.backbone_overrides or {}),
                           ("variants", spec.variants)):
        for label, ovr in entries.items():
            check_keys_exist(list(ovr), base, source, f"{group}[{label!r}] key")
    check_exclusions(spec, base, source)
    trials = spec.trials(base)
    if not trials:
        raise SpecError(f"{source}: exclude leaves no trial to run")
    if check_configs:
        cfgs, refusals = [], {}
        for t in trials:
            what = "/".join(f"{k}={v}" for k, v in t["labels"].items())
            cfg = check_config(compose(base, t["overrides"]), what, source)
            check_objective(spec, cfg, what, source)
            for kind, reason in known_refusals(cfg):
                key = (kind, t["labels"]["variant"] if kind == "learner" else "", t["labels"]["backbone"], reason)
                refusals[key] = refusals.get(key, 0) + 1
            cfgs.append((cfg, what))
        if refusals:
            raise SpecError(refusal_message(refusals, source))
        if data_check is not None:  # after the refusals: listing data sets is the slow part
            for cfg, what in cfgs:
                data_check(cfg, what, source)
    lines = spec.exclusion_lines(base)
    if lines:
        removed = len(spec.grid(base)) - len(trials)
        lines.append(f"{len(trials)} trials to run ({removed} of {len(trials) + removed} excluded)")
    if check_configs:
        lines += tuning_gaps((cfg.backbone.name, cfg.method.name) for cfg, _ in cfgs)
    return base, "\n".join([note, *lines])


def tuning_gaps(pairs: Iterable[tuple[str, str]], path: Path = BACKBONE_DEFAULTS) -> list[str]:
    """One line per backbone on which a study compares methods that have tuned per-backbone defaults
    (pace/defaults/backbones.yaml) with tunable methods that have none there and so run at their class
    defaults: such a comparison is not like for like, and nothing else would say so. Upper bounds
    (joint training) and methods with nothing to tune are not competitors and are left out."""
    by_backbone: dict[str, dict[str, bool]] = {}
    for backbone, method in dict.fromkeys(pairs):  # one lookup per pair, not per trial
        cls = MethodConfig.config_class(method)
        if cls.SEARCH_SPACE and not cls.UPPER_BOUND:
            by_backbone.setdefault(backbone, {})[method] = bool(backbone_defaults(backbone, method, path))
    out = []
    for backbone, tuned in by_backbone.items():
        missing = [m for m, t in tuned.items() if not t]
        if missing and len(missing) < len(tuned):
            have = [m for m, t in tuned.items() if t]
            has, does = ("has" if len(missing) == 1 else "have"), ("does" if len(have) == 1 else "do")
            out.append(f"not like for like on {backbone}: {', '.join(missing)} {has} no tuned defaults there "
                       f"(class defaults) while {', '.join(have)} {does}; tune first with "
                       f"pace tune sweeps/tune.yaml --backbone {backbone} --methods {','.join(missing)}")
    return out


def check_exclusions(spec: AblationSpec, base: dict[str, Any], source: str) -> None:
    """Every ``exclude`` entry matches at least one trial: a typo must not silently run what it meant
    to leave out. The error names the entry and the label that is not on its axis."""
    from pace.registry import did_you_mean

    grid = spec.grid(base)
    on_axis = {a: list(dict.fromkeys(t["labels"][a] for t in grid)) for a in AXES}
    for i, (entry, n) in enumerate(spec.exclusions(base)):
        if n:
            continue
        for axis in (a for a in AXES if a in entry):
            for value in sorted(exclusion_values(entry[axis]) - set(on_axis[axis])):
                raise SpecError(f"{source}: exclude[{i}] {show_exclusion(entry, with_why=False)} matches no trial: "
                                f"{axis} {value!r} is not on the {axis} axis{did_you_mean(value, on_axis[axis])} "
                                f"({', '.join(on_axis[axis])})")
        raise SpecError(f"{source}: exclude[{i}] {show_exclusion(entry, with_why=False)} matches no trial: "
                        "no trial has all of these labels together")


#: the input-length field each input kind takes (pace.config.BackboneConfig)
INPUT_FIELD = {"fbank": "target_frames", "waveform": "num_samples", "whisper-logmel": "seconds",
               "clap-logmel": "seconds"}
#: modules whose backbone builders refuse another kind's input-length field (crepe: _frontend_from,
#: whisper: _frontend_from, hf: _check_input_fields); other builders may ignore it, so are not checked
STRICT_INPUT_MODULES = ("pace.backbones.crepe", "pace.backbones.whisper", "pace.backbones.hf")


def known_refusals(cfg: RunConfig) -> list[tuple[str, str]]:
    """[(kind, reason)] for what would make this trial fail when it builds its backbone ("backbone")
    or its learner ("learner"), told from the registries without building anything.

    Known: a prompt method on a backbone whose class does not support prompts (PromptLearner refuses
    it), a method with linear-only adapters (InfLoRA, SD-LoRA) on a backbone whose blocks are
    convolutions, and an input-length field (seconds, num_samples, target_frames) the backbone does
    not take.
    What cannot be told this cheaply (e.g. prompt blocks beyond the backbone's) is left to the trial."""
    from pace.backbones.registry import get_spec

    spec = get_spec(cfg.backbone.name)
    out = []
    used = INPUT_FIELD.get(spec.input_kind)
    if used and getattr(spec.build, "__module__", None) in STRICT_INPUT_MODULES:
        for f in ("target_frames", "num_samples", "seconds"):
            if f != used and getattr(cfg.backbone, f) is not None:
                out.append(("backbone", f"{spec.name} takes {spec.input_kind} input: it refuses backbone.{f} "
                                        f"(its input length is backbone.{used})"))
    if _prompts_a_transformer(cfg.method.name) and backbone_class_flag(spec, "supports_prompts") is False:
        out.append(("learner", f"{cfg.method.name} prompts a transformer; {spec.name} does not support "
                               "prompt or prefix tuning"))
    if _linear_layers_only(cfg.method.name) and backbone_class_flag(spec, "linear_blocks") is False:
        out.append(("learner", f"{cfg.method.name} adapts nn.Linear layers only; {spec.name}'s blocks are "
                               "convolutions"))
    return out


def _prompts_a_transformer(method: str) -> bool:
    from pace.methods.prompt_base import PromptLearner
    from pace.registry import METHODS

    cls = METHODS.find(method)
    return isinstance(cls, type) and issubclass(cls, PromptLearner)


def _linear_layers_only(method: str) -> bool:
    from pace.registry import METHODS

    cls = METHODS.find(method)
    return bool(getattr(cls, "LINEAR_LAYERS_ONLY", False))


def backbone_class_flag(spec: Any, flag: str) -> bool | None:
    """A boolean class attribute of a registered backbone (``supports_prompts``, ``linear_blocks``),
    read from the class its builder says it returns (``BackboneSpec`` does not carry it); None when
    that cannot be told without building (no return annotation, or the flag is a property, as
    ``supports_prompts`` is for the HF families)."""
    import inspect

    from pace.backbones.base import Backbone

    ret = getattr(spec.build, "__annotations__", {}).get("return")
    if isinstance(ret, str):  # postponed annotations: the name in the builder's module
        ret = getattr(spec.build, "__globals__", {}).get(ret)
    if not (isinstance(ret, type) and issubclass(ret, Backbone)):
        return None
    value = inspect.getattr_static(ret, flag, None)
    return value if isinstance(value, bool) else None


def refusal_message(refusals: dict[tuple[str, str, str, str], int], source: str) -> str:
    lines = [f"{source}: these trials would fail when they build their backbone or learner:"]
    for (kind, variant, backbone, reason), n in refusals.items():
        who = f"variant={variant} backbone={backbone}" if kind == "learner" else f"backbone={backbone}"
        lines.append(f"  {who} ({n} trial{'s' if n != 1 else ''}): {reason}")
    learner = [(v, b, r) for (k, v, b, r) in refusals if k == "learner"]
    if learner:
        lines.append("  if the combination does not apply, leave it out with an exclude entry, e.g.:")
        lines.append("    exclude:")
        lines += [f"      - {{variant: {v}, backbone: {b}, why: \"{r}\"}}" for v, b, r in dict.fromkeys(learner)]
    if any(k == "backbone" for k, *_ in refusals):
        lines.append("  set each backbone's input length on the axis instead of in the base, e.g. "
                     "backbones: {whisper-tiny: {backbone.seconds: 1.0}, crepe-tiny: {backbone.num_samples: 16000}}")
    return "\n".join(lines)
