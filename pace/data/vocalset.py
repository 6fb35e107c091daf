"""VocalSet (CC BY 4.0, Zenodo): 20 professional singers (f1-f9, m1-m11), 44.1 kHz mono, 10.1 h.

Layout: ``FULL/{singer}/{context}/{technique}/{singer}_{context}_{technique}_{vowel}.wav`` with the
contexts ``arpeggios``, ``scales``, ``long_tones`` and ``excerpts``; the root may be the folder holding
``FULL/`` or ``FULL/`` itself. ``train_singers_technique.txt`` / ``test_singers_technique.txt`` (the
singer-disjoint split of the VocalSet paper) set ``Item.split`` when present. Singer and technique are
taken from the folders, not the file names, because some shipped file names lack the singer prefix.

The technique folders hold 17 names: belt, breathy, fast_forte, fast_piano, forte, inhaled, lip_trill,
messa, pp, slow_forte, slow_piano, spoken, straight, trill, trillo, vibrato, vocal_fry.

**The 16 classes (label ``technique``, the PACE benchmark).** PACE reports VocalSet as 16 "singing
techniques" in 8 sessions of 2 without listing them. We take every technique folder except
``spoken``: spoken text is speech, not a singing technique, and it is the only one of the 17 that is
not sung, so "16 singing techniques" is exactly the other 16. (The VocalSet paper's own 10-technique
task and its 20 singers give neither 16 nor a sung-only set.) ``technique_all`` keeps all 17 and
``singer`` gives the 20 singers. This choice is ours; the paper's class list is not public.
"""

from __future__ import annotations

import re
from pathlib import Path

from pace.data.datasets import AudioDataset, Item, dataset
from pace.data.presets import Preset
from pace.data.layout import LayoutError, child, require_dir, visible_dirs

TECHNIQUES_ALL = ("belt", "breathy", "fast_forte", "fast_piano", "forte", "inhaled", "lip_trill", "messa",
                  "pp", "slow_forte", "slow_piano", "spoken", "straight", "trill", "trillo", "vibrato",
                  "vocal_fry")
TECHNIQUES = tuple(t for t in TECHNIQUES_ALL if t != "spoken")  # the 16 sung techniques
LABELS = ("technique", "technique_all", "singer")
SINGER_LISTS = {"train_singers_technique.txt": "train", "test_singers_technique.txt": "test"}
_SINGER = re.compile(r"^(f|m)([0-9]+)$")
_LIST_ENTRY = re.compile(r"^(female|male|f|m)\s*([0-9]+)$", re.IGNORECASE)


def _singer_split(root: Path) -> dict[str, str]:
    """singer -> official split from the shipped lists (entries like ``female1`` or ``f1``)."""
    out: dict[str, str] = {}
    for fname, tag in SINGER_LISTS.items():
        path = child(root, fname)
        if path is None:
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            m = _LIST_ENTRY.match(line.strip())
            if not m:
                raise LayoutError(f"{path}:{lineno}: expected a singer like 'female1' or 'm3', got {line.strip()!r}")
            out[f"{m.group(1)[0].lower()}{int(m.group(2))}"] = tag
    return out


def load_vocalset(root: str | Path, label: str = "technique") -> AudioDataset:
    if label not in LABELS:
        raise ValueError(f"VocalSet label must be one of {LABELS}, got {label!r}")
    root = Path(root)
    require_dir(root, "VocalSet root (expected FULL/<singer>/<context>/<technique>/*.wav)")
    full = child(root, "FULL") or root
    singers = visible_dirs(full)
    if not singers:
        raise FileNotFoundError(f"VocalSet not found at {root}: no singer folders (f1..f9, m1..m11) in {full}")
    split = _singer_split(root) or _singer_split(full)
    items = []
    for sdir in singers:
        if not _SINGER.match(sdir.name):
            raise LayoutError(f"{sdir}: expected singer folders named f1..f9 or m1..m11, got {sdir.name!r}")
        for ctx in visible_dirs(sdir):
            stray = [p.name for p in ctx.iterdir() if p.is_file() and p.suffix.lower() == ".wav"]
            if stray:
                raise LayoutError(f"{ctx}: audio files directly in a context folder ({stray[0]}, ...); "
                                  "expected <context>/<technique>/*.wav")
            for tdir in visible_dirs(ctx):
                if tdir.name not in TECHNIQUES_ALL:
                    raise LayoutError(f"{tdir}: unknown technique folder {tdir.name!r}; expected one of "
                                      f"{', '.join(TECHNIQUES_ALL)}")
                if label == "technique" and tdir.name == "spoken":
                    continue
                for wav in sorted(p for p in tdir.iterdir() if p.is_file() and p.suffix.lower() == ".wav"
                                  and not p.name.startswith(".")):
                    lab = sdir.name if label == "singer" else tdir.name
                    items.append(Item(key=str(wav.relative_to(full)), label=lab, path=wav,
                                      split=split.get(sdir.name)))
    if not items:
        raise FileNotFoundError(f"no VocalSet .wav files under {full}")
    return AudioDataset(f"vocalset-{label}", items, description=f"VocalSet at {root}, label={label}")


@dataset("vocalset", summary="VocalSet singing: 20 singers, 17 techniques", labels=LABELS, presets=(
    Preset("vocalset", "VocalSet singing techniques; 16 sung techniques (all but 'spoken') in 8 sessions of 2 "
           "(paper); nominal ~95 clips per class is inferred from the paper's Fig. 9",
           {"label": "technique"}, {"num_sessions": 8}, 16, 95, False,
           "VocalSet: FULL/<singer>/<context>/<technique>/*.wav"),))
def _from_config(cfg) -> AudioDataset:
    return load_vocalset(cfg.root, label=cfg.label)
