"""Real recorded drum kits from Debian's ``hydrogen-drumkits`` package: a non-voice fine-grained set.

Each kit folder holds a ``drumkit.xml`` (Hydrogen's format, with or without an XML namespace) that
lists the kit's instruments; each instrument names one sample file (old format) or several velocity
layers (``<layer><filename>``). Labels:

- ``kit_instrument`` (default): ``<kit>:<instrument>``, e.g. ``BJA_Pacific:Snare Rim``; clips are
  the instrument's distinct sample files (velocity layers). Classes are fine-grained: many kits have
  a kick, a snare, hi-hats..., told apart only by the kit's recording.
- ``instrument``: the instrument name alone (kits pooled; coarse, names are not normalised).

Only instruments with at least ``MIN_CLIPS`` distinct existing files are kept (a class needs clips
for training and for testing). A file listed twice in one kit counts for the first instrument that
names it. Licences: per kit GPL-2(+), CC-BY(-SA)-3.0 or CC0 (see
/usr/share/doc/hydrogen-drumkits/copyright); the files are read in place, never copied.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from pace.data.datasets import AudioDataset, Item, dataset
from pace.data.presets import Preset

DEFAULT_ROOT = Path("/usr/share/hydrogen/data/drumkits")
LABELS = ("kit_instrument", "instrument")
MIN_CLIPS = 3


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # drop an XML namespace


def kit_instruments(kit_dir: Path) -> list[tuple[str, list[str]]]:
    """(instrument name, distinct existing sample files in layer order) for one kit folder."""
    xml = kit_dir / "drumkit.xml"
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{xml}: not valid XML ({exc})") from None
    used: set[str] = set()
    names: dict[str, int] = {}
    out = []
    for ins in (e for e in root.iter() if _local(e.tag) == "instrument"):
        name = next((c.text.strip() for c in ins if _local(c.tag) == "name" and c.text), "") or "unnamed"
        files = []
        for e in ins.iter():
            f = (e.text or "").strip() if _local(e.tag) == "filename" else ""
            if f and f not in used and (kit_dir / f).is_file():
                used.add(f)
                files.append(f)
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:  # two instruments with one name in a kit stay apart
            name = f"{name} #{names[name]}"
        out.append((name, files))
    return out


def load_drumkits(root: str | Path | None = None, label: str = "kit_instrument",
                  min_clips: int = MIN_CLIPS) -> AudioDataset:
    if label not in LABELS:
        raise ValueError(f"drumkits label must be one of {LABELS}, got {label!r}")
    root = Path(root) if root else DEFAULT_ROOT
    kits = sorted(p for p in root.iterdir() if (p / "drumkit.xml").is_file()) if root.is_dir() else []
    if not kits:
        raise FileNotFoundError(f"no drum kits (<kit>/drumkit.xml) under {root}; install Debian's "
                                "hydrogen-drumkits (apt-get install hydrogen-drumkits) or set data.root")
    items = []
    for kit in kits:
        for name, files in kit_instruments(kit):
            if len(files) < min_clips:
                continue
            lab = f"{kit.name}:{name}" if label == "kit_instrument" else name
            items += [Item(key=f"{kit.name}/{f}", label=lab, path=kit / f) for f in files]
    if not items:
        raise FileNotFoundError(f"no instrument with >= {min_clips} sample files in the kits under {root}")
    return AudioDataset(f"drumkits-{label}", items,
                        description=f"hydrogen drum kits at {root}, label={label}, >= {min_clips} clips per class")


@dataset("drumkits", summary="Hydrogen drum kits (Debian hydrogen-drumkits): recorded velocity layers",
         labels=LABELS, root="optional", presets=(
             Preset("drumkits", "Hydrogen drum kits, non-voice fine-grained; kit x instrument, 100 classes of 3-8 "
                    "recorded velocity layers in 10 sessions of 10", {}, {"num_sessions": 10}, 100,
                    479 / 100, False, "Debian hydrogen-drumkits (default /usr/share/hydrogen/data/drumkits)"),))
def _from_config(cfg) -> AudioDataset:  # root defaults to the installed package
    return load_drumkits(cfg.root, label=cfg.label)
