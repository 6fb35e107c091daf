"""Benchmark presets: a name -> the data and scenario config fields of one benchmark.

The paper's six benchmarks (ESC-50, US8K, SC2, TIMIT-2, TIMIT-3, VocalSet; equal sessions, seeded
8:2 split per class), plus ESC-10, NSynth family/instrument (a non-voice fine-grained task the
reviewers asked for), FSDD digits and digit x speaker, instruments rendered from a soundfont, and
two cross-dataset sequences. A preset never fixes a root: ``--root`` (or ``data.root``) points at the
data set; for a sequence it points at a folder holding one sub-folder per part (named in ``parts``).

``pace data describe NAME [--root DIR]`` prints the sessions: nominal sizes without a root (``~`` marks
averages over unequal classes), the real train/test counts per session with one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pace.config import DataConfig, ScenarioConfig, Seeds
from pace.registry import DATASETS, did_you_mean


@dataclass(frozen=True)
class PartRef:
    name: str  # label prefix and sub-folder of --root
    preset: str  # the part's data and session count come from this preset


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    data: dict = field(default_factory=dict)  # DataConfig fields (no root; dataset: the declaring data set)
    scenario: dict = field(default_factory=dict)  # ScenarioConfig fields
    classes: int = 0  # nominal number of classes
    clips_per_class: float | None = None  # nominal clips per class (after max_per_class)
    exact: bool = False  # True when every class has exactly clips_per_class clips
    root_hint: str = ""  # what the root holds
    parts: tuple[PartRef, ...] = ()  # a cross-dataset sequence


class _Presets(Mapping):
    """Every registered data set's presets, by name, in the registry's order (read on first use).

    A data set module declares its benchmarks beside its loader (``pace.data.datasets.dataset``);
    the preset's data fields leave out ``dataset``, which is the declaring data set's name.
    """

    def _table(self) -> dict[str, Preset]:
        table: dict[str, Preset] = {}
        for name, spec in DATASETS.items():
            for p in spec.presets:
                if p.name in table:
                    raise ValueError(f"preset {p.name!r} is declared by data sets "
                                     f"{table[p.name].data['dataset']!r} and {name!r}")
                table[p.name] = replace(p, data={"dataset": name, **p.data})
        return table

    def __getitem__(self, name: str) -> Preset:
        return self._table()[name]

    def __iter__(self):
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


PRESETS: Mapping[str, Preset] = _Presets()


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}{did_you_mean(name, PRESETS)} (known: {', '.join(PRESETS)})")
    return PRESETS[name]


def preset_fields(name: str, root: str | Path | None = None) -> tuple[dict, dict]:
    """(data fields, scenario fields) of a preset; ``root`` fills data.root (parts: root/<part name>)."""
    p = get_preset(name)
    if not p.parts:
        data = dict(p.data)
        if root is not None:
            data["root"] = str(root)
        return data, dict(p.scenario)
    parts = []
    for ref in p.parts:
        sub, scen = preset_fields(ref.preset, None if root is None else Path(root) / ref.name)
        part = {"name": ref.name, "data": sub, "num_sessions": scen["num_sessions"]}
        if scen.get("max_classes") is not None:
            part["max_classes"] = scen["max_classes"]
        parts.append(part)
    return {"dataset": "sequence", "parts": parts}, {"num_sessions": sum(x["num_sessions"] for x in parts)}


def preset_configs(name: str, root: str | Path | None = None) -> tuple[DataConfig, ScenarioConfig]:
    data, scen = preset_fields(name, root)
    return DataConfig(**data), ScenarioConfig(**scen)


def _split_sizes(n: float, test_fraction: float) -> tuple[float, float]:
    # the scenario's per-class rule: round(test_fraction * n) test clips, at least 1, at most n - 1
    if n < 2:
        return n, 0
    test = min(max(1, round(test_fraction * n)), n - 1)
    return n - test, test


def nominal_sessions(name: str) -> list[tuple[int, float, float, bool]]:
    """(classes, train clips, test clips, exact) per session from the preset's nominal sizes."""
    p = get_preset(name)
    if p.parts:
        return [row for ref in p.parts for row in nominal_sessions(ref.preset)]
    scen = ScenarioConfig(**p.scenario)
    from pace.data.scenario import session_sizes

    sizes = session_sizes(p.classes, scen.num_sessions, scen.first_session_classes)
    n = p.clips_per_class
    if n is None:
        return [(k, float("nan"), float("nan"), False) for k in sizes]
    tr, te = _split_sizes(round(n) if p.exact else n, scen.test_fraction)
    return [(k, k * tr, k * te, p.exact) for k in sizes]


def _rows(sessions: list[tuple[int, float, float, bool]]) -> list[list[str]]:
    """Table rows, consecutive equal sessions merged into a range (TIMIT-2 has 315)."""
    fmt = lambda v, exact: f"{v:.0f}" if exact else f"~{v:.0f}"  # noqa: E731
    rows, start = [], 0
    for i in range(1, len(sessions) + 1):
        if i == len(sessions) or sessions[i] != sessions[start]:
            k, tr, te, exact = sessions[start]
            span = f"{start + 1}" if i - start == 1 else f"{start + 1}-{i}"
            rows.append([span, str(k), fmt(tr, exact), fmt(te, exact)])
            start = i
    return rows


def describe(name: str, root: str | Path | None = None, seeds: Seeds | None = None) -> str:
    from pace.console import table

    p = get_preset(name)
    data, scen = preset_configs(name, root)
    lines = [f"{p.name}: {p.summary}"]
    if root is None:
        sessions = nominal_sessions(name)
        lines.append(f"root: {p.root_hint}")
        lines.append("nominal sizes (give --root for the real counts; ~ = average over unequal classes):")
    else:
        from pace.data.datasets import build_dataset
        from pace.data.scenario import build_scenario

        ds = build_dataset(data)
        sc = build_scenario(ds.items, scen, seeds or Seeds())
        sessions = [(len(s.classes), len(s.train) + len(s.val), len(s.test), True) for s in sc.sessions]
        lines.append(f"root: {root} ({len(ds)} clips, {len(ds.labels)} classes; seeds class_order=0, split=0)")
    total_classes = sum(s[0] for s in sessions)
    lines.append(f"{len(sessions)} sessions, {total_classes} classes")
    lines.append(table(_rows(sessions), ["session", "classes", "train", "test"]))
    return "\n".join(lines)


def list_presets() -> str:
    from pace.console import table

    rows = []
    for p in PRESETS.values():
        sessions = nominal_sessions(p.name)
        sizes = sorted({s[0] for s in sessions})
        per = "/".join(str(s) for s in sizes)
        rows.append([p.name, str(sum(s[0] for s in sessions)), str(len(sessions)), per, p.summary.split(";")[0]])
    return table(rows, ["preset", "classes", "sessions", "per session", "what"])


def expected_classes(name: str) -> int:
    p = get_preset(name)
    return sum(expected_classes(r.preset) for r in p.parts) if p.parts else p.classes


def check_summary(ds, preset: str | None = None, scenario: ScenarioConfig | None = None) -> tuple[str, bool]:
    """Class counts, the official split, and (for a preset) whether the classes and sessions fit."""
    counts = ds.class_counts()
    lo, hi = min(counts.values()), max(counts.values())
    lines = [f"{ds.name}: {len(ds)} clips, {len(counts)} classes, {lo}-{hi} clips per class"]
    ok = True
    if lo != hi:
        small = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))[:3]
        lines.append("  fewest clips: " + ", ".join(f"{k} ({v})" for k, v in small))
    splits: dict[str, int] = {}
    for it in ds.items:
        if it.split is not None:
            splits[it.split] = splits.get(it.split, 0) + 1
    if splits:
        lines.append("  official split: " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())))
    if preset is not None:
        want = expected_classes(preset)
        has_cap = (scenario is not None and scenario.max_classes is not None) or any(
            "max_classes" in PRESETS[r.preset].scenario for r in get_preset(preset).parts)
        if len(counts) < want or (len(counts) != want and not has_cap):
            lines.append(f"  preset {preset} expects {want} classes, found {len(counts)}")
            ok = False
        if scenario is not None:
            from pace.data.scenario import build_scenario

            try:
                sc = build_scenario(ds.items, scenario, Seeds())
                sizes = sorted({len(s.classes) for s in sc.sessions})
                lines.append(f"  preset {preset}: {len(sc.sessions)} sessions of "
                             f"{'/'.join(map(str, sizes))} classes, {sum(len(s.test) for s in sc.sessions)} test clips")
            except ValueError as exc:
                lines.append(f"  preset {preset}: sessions do not build: {exc}")
                ok = False
    return "\n".join(lines), ok
