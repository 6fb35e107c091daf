"""What a spec must pass before Ray starts: every problem is reported before any trial runs.

Unknown keys and bad ranges are the models' job (pace.study.spec); here: conditions on keys that are
never set, keys whose parent is not a section, and any trial config that
``pace.config.validate_config`` would reject (a grid or an ablation is enumerated in full; a searched
space is probed at every bound and categorical value plus a seeded random sample). With a
``DataCheck``, also what only the data can tell (classes that do not fill the sessions).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pace.config import ConfigError, RunConfig, compose, get_dotted, validate_config
from pace.study import SpecError
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
    """(resolved base, backbone note) of an ablation whose every trial config validates."""
    base, note = resolved_base(spec, source) if check_configs else spec.resolve_base()
    for group, entries in (("benchmarks", spec.benchmarks), ("variants", spec.variants)):
        for label, ovr in entries.items():
            check_keys_exist(list(ovr), base, source, f"{group}[{label!r}] key")
    if check_configs:
        for t in spec.trials(base):
            what = "/".join(f"{k}={v}" for k, v in t["labels"].items())
            cfg = check_config(compose(base, t["overrides"]), what, source)
            check_objective(spec, cfg, what, source)
            if data_check is not None:
                data_check(cfg, what, source)
    return base, note
