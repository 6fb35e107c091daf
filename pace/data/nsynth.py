"""NSynth (CC BY 4.0): 305,979 four-second 16 kHz notes of 1,006 instruments in 11 families.

Layout: ``nsynth-{train,valid,test}/examples.json`` + ``audio/{note_str}.wav``; ``examples.json`` maps
each ``note_str`` to its fields (``instrument_str``, ``instrument_family_str``,
``instrument_source_str``, ``pitch``, ``velocity``, ...). The root is one split folder, or a folder
holding one or more ``nsynth-*`` split folders (then ``Item.split`` is train/val/test; note that the
official splits are instrument-disjoint, so they only make sense for family or source labels).
Data sets written by ``pace data render`` (pace/data/render.py) use the same layout.

Labels: ``family`` (11 classes, coarse), ``instrument`` (fine-grained, non-voice when the vocal family
is left out), ``source`` (acoustic / electronic / synthetic). ``subset`` filters notes: ``nonvocal``
drops the vocal family; ``acoustic``, ``electronic`` or ``synthetic`` keep one source; join filters
with ``+`` (``acoustic+nonvocal``).
"""

from __future__ import annotations

import json
from pathlib import Path

from pace.data.datasets import AudioDataset, Item, dataset
from pace.data.presets import Preset
from pace.data.layout import LayoutError, files_in

FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string",
            "synth_lead", "vocal")  # NSynth's instrument_family order
SOURCES = ("acoustic", "electronic", "synthetic")  # NSynth's instrument_source order
FIELDS = ("note_str", "instrument_str", "instrument_family_str", "instrument_source_str", "pitch", "velocity")
LABELS = {"family": "instrument_family_str", "instrument": "instrument_str", "source": "instrument_source_str"}
SPLIT_DIRS = {"nsynth-train": "train", "nsynth-valid": "val", "nsynth-test": "test"}


def _filters(subset: str | None) -> tuple[bool, str | None]:
    """(drop vocal, keep only this source) from ``subset``."""
    if not subset:
        return False, None
    nonvocal, source = False, None
    for tok in subset.split("+"):
        if tok == "nonvocal":
            nonvocal = True
        elif tok in SOURCES and source is None:
            source = tok
        else:
            raise ValueError(f"NSynth subset {subset!r}: {tok!r} is not 'nonvocal' or one source of {SOURCES} "
                             "(join filters with '+')")
    return nonvocal, source


def _read_split(folder: Path, label_field: str, nonvocal: bool, source: str | None,
                split: str | None, prefix: str) -> list[Item]:
    meta = folder / "examples.json"
    if not meta.is_file():
        raise FileNotFoundError(f"NSynth metadata not found: {meta} (expected examples.json + audio/)")
    try:
        examples = json.loads(meta.read_text())
    except json.JSONDecodeError as exc:
        raise LayoutError(f"{meta}: not valid JSON ({exc})") from None
    if not isinstance(examples, dict) or not examples:
        raise LayoutError(f"{meta}: expected a non-empty object keyed by note_str")
    audio = folder / "audio"
    present = files_in(audio)
    items = []
    for key, ex in examples.items():
        if not isinstance(ex, dict):
            raise LayoutError(f"{meta}: entry {key!r} is not an object")
        missing = [f for f in FIELDS if f not in ex]
        if missing:
            raise LayoutError(f"{meta}: entry {key!r} lacks field(s) {missing}; expected {', '.join(FIELDS)}")
        if ex["note_str"] != key:
            raise LayoutError(f"{meta}: entry {key!r} has note_str {ex['note_str']!r}; they must be equal")
        fam, src = ex["instrument_family_str"], ex["instrument_source_str"]
        if fam not in FAMILIES:
            raise LayoutError(f"{meta}: entry {key!r} has unknown instrument_family_str {fam!r}; "
                              f"expected one of {', '.join(FAMILIES)}")
        if src not in SOURCES:
            raise LayoutError(f"{meta}: entry {key!r} has unknown instrument_source_str {src!r}; "
                              f"expected one of {', '.join(SOURCES)}")
        if (nonvocal and fam == "vocal") or (source is not None and src != source):
            continue
        if f"{key}.wav" not in present:
            raise FileNotFoundError(f"{meta}: entry {key!r}: audio file {audio / (key + '.wav')} is missing")
        items.append(Item(key=prefix + key, label=str(ex[label_field]), path=audio / f"{key}.wav", split=split))
    return items


def load_nsynth(root: str | Path, label: str = "family", subset: str | None = None) -> AudioDataset:
    if label not in LABELS:
        raise ValueError(f"NSynth label must be one of {tuple(LABELS)}, got {label!r}")
    nonvocal, source = _filters(subset)
    root = Path(root)
    if (root / "examples.json").is_file():
        items = _read_split(root, LABELS[label], nonvocal, source, None, "")
    else:
        splits = [(root / d, tag) for d, tag in SPLIT_DIRS.items() if (root / d).is_dir()]
        if not splits:
            raise FileNotFoundError(f"NSynth not found at {root}: expected examples.json + audio/, or "
                                    f"folders {', '.join(SPLIT_DIRS)}")
        items = [it for d, tag in splits
                 for it in _read_split(d, LABELS[label], nonvocal, source, tag, f"{d.name}/")]
    if not items:
        raise LayoutError(f"NSynth at {root}: no notes left after subset {subset!r}")
    name = f"nsynth-{label}" + (f"-{subset}" if subset else "")
    return AudioDataset(name, items, description=f"NSynth layout at {root}, label={label}, subset={subset}")


@dataset("nsynth", summary="NSynth notes (or pace data render output): family, instrument or source labels",
         labels=tuple(LABELS), subsets=True, presets=(
             Preset("nsynth-family", "NSynth instrument family; 11 classes: 3 then 4 sessions of 2, "
                    "400 notes per family (hash-chosen, balances the families)",
                    {"label": "family", "max_per_class": 400},
                    {"num_sessions": 5, "first_session_classes": 3}, 11, 400, True,
                    "nsynth-train/ (examples.json + audio/) or a folder of nsynth-* splits"),
             Preset("nsynth-instrument", "NSynth instruments, non-voice fine-grained; 50 non-vocal "
                    "instruments in 10 sessions of 5, at most 40 notes each",
                    {"label": "instrument", "subset": "nonvocal", "max_per_class": 40},
                    {"num_sessions": 10, "max_classes": 50}, 50, 40, False,
                    "nsynth-train/ (examples.json + audio/)"),
             Preset("rendered-instruments", "GM instruments rendered from a soundfont; 20 instruments in 5 "
                    "sessions of 4, make the root with: pace data render --soundfont fluidr3 --out DIR "
                    "--instruments 20", {"label": "instrument"}, {"num_sessions": 5}, 20, 32, True,
                    "output of pace data render (examples.json + audio/)")))
def _from_config(cfg) -> AudioDataset:
    return load_nsynth(cfg.root, label=cfg.label, subset=cfg.subset)
