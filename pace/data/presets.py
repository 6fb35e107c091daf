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

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from pace.config import DataConfig, ScenarioConfig, Seeds


@dataclass(frozen=True)
class PartRef:
    name: str  # label prefix and sub-folder of --root
    preset: str  # the part's data and session count come from this preset


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    data: dict = field(default_factory=dict)  # DataConfig fields (no root)
    scenario: dict = field(default_factory=dict)  # ScenarioConfig fields
    classes: int = 0  # nominal number of classes
    clips_per_class: float | None = None  # nominal clips per class (after max_per_class)
    exact: bool = False  # True when every class has exactly clips_per_class clips
    root_hint: str = ""  # what the root holds
    parts: tuple[PartRef, ...] = ()  # a cross-dataset sequence


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("esc50", "ESC-50 environmental sounds; 50 classes in 10 sessions of 5 (paper)",
           {"dataset": "esc50"}, {"num_sessions": 10}, 50, 40, True, "ESC-50 repo: meta/esc50.csv, audio/"),
    Preset("esc10", "ESC-10 subset of ESC-50; 10 classes in 5 sessions of 2",
           {"dataset": "esc50", "subset": "esc10"}, {"num_sessions": 5}, 10, 40, True,
           "ESC-50 repo: meta/esc50.csv, audio/"),
    Preset("us8k", "UrbanSound8K urban sounds; 10 classes in 5 sessions of 2 (paper)",
           {"dataset": "us8k"}, {"num_sessions": 5}, 10, 8732 / 10, False,
           "UrbanSound8K: metadata/UrbanSound8K.csv, audio/fold1..10/"),
    Preset("sc2", "Speech Commands v2 keywords; 35 words in 7 sessions of 5 (paper)",
           {"dataset": "speechcommands"}, {"num_sessions": 7}, 35, 105829 / 35, False,
           "speech_commands_v0.02: one folder per word, validation_list.txt, testing_list.txt"),
    Preset("timit2", "TIMIT speaker identity; 630 speakers in 315 sessions of 2 (paper)",
           {"dataset": "timit", "label": "speaker"}, {"num_sessions": 315}, 630, 10, True,
           "TIMIT: TRAIN/ and TEST/ with DR1..DR8/<speaker>/*.WAV"),
    Preset("timit3", "TIMIT speaker identity; 630 speakers in 210 sessions of 3 (paper)",
           {"dataset": "timit", "label": "speaker"}, {"num_sessions": 210}, 630, 10, True,
           "TIMIT: TRAIN/ and TEST/ with DR1..DR8/<speaker>/*.WAV"),
    Preset("vocalset", "VocalSet singing techniques; 16 sung techniques (all but 'spoken') in 8 sessions of 2 (paper); "
           "nominal ~95 clips per class is inferred from the paper's Fig. 9",
           {"dataset": "vocalset", "label": "technique"}, {"num_sessions": 8}, 16, 95, False,
           "VocalSet: FULL/<singer>/<context>/<technique>/*.wav"),
    Preset("nsynth-family", "NSynth instrument family; 11 classes: 3 then 4 sessions of 2, "
           "400 notes per family (hash-chosen, balances the families)",
           {"dataset": "nsynth", "label": "family", "max_per_class": 400},
           {"num_sessions": 5, "first_session_classes": 3}, 11, 400, True,
           "nsynth-train/ (examples.json + audio/) or a folder of nsynth-* splits"),
    Preset("nsynth-instrument", "NSynth instruments, non-voice fine-grained; 50 non-vocal "
           "instruments in 10 sessions of 5, at most 40 notes each",
           {"dataset": "nsynth", "label": "instrument", "subset": "nonvocal", "max_per_class": 40},
           {"num_sessions": 10, "max_classes": 50}, 50, 40, False,
           "nsynth-train/ (examples.json + audio/)"),
    Preset("drumkits", "Hydrogen drum kits, non-voice fine-grained; kit x instrument, 100 classes of 3-8 "
           "recorded velocity layers in 10 sessions of 10", {"dataset": "drumkits"}, {"num_sessions": 10}, 100,
           479 / 100, False, "Debian hydrogen-drumkits (default /usr/share/hydrogen/data/drumkits)"),
    Preset("fsdd-digits", "FSDD spoken digits; 10 classes in 5 sessions of 2",
           {"dataset": "fsdd", "label": "digit"}, {"num_sessions": 5}, 10, 300, True,
           "FSDD: recordings/*.wav (default $PACE_FSDD_ROOT or ../shared/datasets/fsdd)"),
    Preset("fsdd-fine", "FSDD digit x speaker; 60 fine-grained classes in 10 sessions of 6",
           {"dataset": "fsdd", "label": "digit_speaker"}, {"num_sessions": 10}, 60, 50, True,
           "FSDD: recordings/*.wav (default $PACE_FSDD_ROOT or ../shared/datasets/fsdd)"),
    Preset("rendered-instruments", "GM instruments rendered from a soundfont; 20 instruments in 5 sessions of 4, make "
           "the root with: pace data render --soundfont fluidr3 --out DIR --instruments 20",
           {"dataset": "nsynth", "label": "instrument"}, {"num_sessions": 5}, 20, 32, True,
           "output of pace data render (examples.json + audio/)"),
    Preset("cross-soundfont", "cross-soundfont instruments; the same 20 instruments from FluidR3 "
           "(sessions 1-5) then TimGM6mb (6-10), labels prefixed by soundfont, so 40 classes",
           parts=(PartRef("fluidr3", "rendered-instruments"), PartRef("timgm6mb", "rendered-instruments")),
           root_hint="fluidr3/ and timgm6mb/, each from pace data render --instruments 20"),
    Preset("esc50-us8k-sc2", "cross-dataset ESC-50, US8K, SC2; ESC-50 (10 sessions), then US8K (5), "
           "then SC2 (7), 95 classes",
           parts=(PartRef("esc50", "esc50"), PartRef("us8k", "us8k"), PartRef("sc2", "sc2")),
           root_hint="esc50/, us8k/ and sc2/ sub-folders in each data set's own layout"),
)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown preset {name!r}{hint} (known: {', '.join(PRESETS)})")
    return PRESETS[name]


def _part_sessions(ref: PartRef) -> int:
    return get_preset(ref.preset).scenario["num_sessions"]


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
    from pace.reporting import table

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
    from pace.reporting import table

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
