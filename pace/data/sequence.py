"""Cross-dataset sequences: sessions drawn from several data sets, one data set after another.

``data.dataset: sequence`` with ``data.parts``, each ``{name, data: <a data config>, num_sessions,
max_classes?}``. Every clip keeps its part: keys become ``{name}/{key}`` and labels
``{name}:{label}``, so label spaces stay apart even when two parts share class names (the same
instruments rendered from two soundfonts are different classes). The scenario builder puts each
part's classes into that part's own consecutive sessions, in the listed order, and shuffles the class
order only within a part (pace/data/scenario.py). ``scenario.num_sessions`` must equal the parts' sum.

    data:
      dataset: sequence
      parts:
        - {name: esc50, num_sessions: 10, data: {dataset: esc50, root: /data/ESC-50}}
        - {name: us8k, num_sessions: 5, data: {dataset: us8k, root: /data/UrbanSound8K}}
    scenario: {num_sessions: 15}

``pace data describe esc50-us8k-sc2 --yaml --root DIR`` prints such sections for the presets.
"""

from __future__ import annotations

from dataclasses import dataclass

from pace.data.datasets import AudioDataset, Item, dataset
from pace.data.presets import PartRef, Preset


@dataclass(frozen=True)
class Part:
    """Where a clip sits in a sequence: part ``index`` named ``name`` filling ``num_sessions`` sessions."""

    index: int
    name: str
    num_sessions: int
    max_classes: int | None = None


@dataclass(frozen=True)
class SequenceItem(Item):
    # an Item that also knows its part; the scenario builder reads ``part`` (plain Items have none)
    part: Part | None = None


def load_sequence(cfg) -> AudioDataset:
    from pace.data.datasets import build_dataset

    if not cfg.parts:
        raise ValueError("data.dataset=sequence needs data.parts: a list of {name, data, num_sessions}")
    sources: dict[str, tuple[AudioDataset, Item]] = {}
    items: list[Item] = []
    names: list[str] = []
    for i, pc in enumerate(cfg.parts):
        if pc.data.dataset == "sequence":
            raise ValueError(f"data.parts[{i}] ({pc.name!r}): a part cannot itself be a sequence")
        if pc.name in names:
            raise ValueError(f"data.parts[{i}]: part name {pc.name!r} is used twice; names prefix the labels")
        names.append(pc.name)
        try:
            ds = build_dataset(pc.data)
        except (ValueError, FileNotFoundError) as exc:
            raise type(exc)(f"data.parts[{i}] ({pc.name!r}): {exc}") from exc
        part = Part(i, pc.name, pc.num_sessions, pc.max_classes)
        for it in ds.items:
            new = SequenceItem(key=f"{pc.name}/{it.key}", label=f"{pc.name}:{it.label}", path=it.path,
                               split=it.split, part=part)
            sources[new.key] = (ds, it)
            items.append(new)

    def waveform(item: Item):
        ds, orig = sources[item.key]
        return ds.waveform(orig)  # each part keeps its own reader (e.g. a generated data set)

    total = sum(pc.num_sessions for pc in cfg.parts)
    return AudioDataset("seq-" + "+".join(names), items, waveform,
                        description=f"sequence of {', '.join(names)} ({total} sessions)")


# registered after load_sequence is defined; data.root is unused: each part names its own
dataset("sequence", summary="several data sets one after another (data.parts), label spaces kept apart",
        root="unused", parts=True, presets=(
            Preset("cross-soundfont", "cross-soundfont instruments; the same 20 instruments from FluidR3 "
                   "(sessions 1-5) then TimGM6mb (6-10), labels prefixed by soundfont, so 40 classes",
                   parts=(PartRef("fluidr3", "rendered-instruments"), PartRef("timgm6mb", "rendered-instruments")),
                   root_hint="fluidr3/ and timgm6mb/, each from pace data render --instruments 20"),
            Preset("esc50-us8k-sc2", "cross-dataset ESC-50, US8K, SC2; ESC-50 (10 sessions), then US8K (5), "
                   "then SC2 (7), 95 classes",
                   parts=(PartRef("esc50", "esc50"), PartRef("us8k", "us8k"), PartRef("sc2", "sc2")),
                   root_hint="esc50/, us8k/ and sc2/ sub-folders in each data set's own layout")))(load_sequence)
