"""TIMIT (LDC93S1; licensed from the LDC, not redistributable): 630 speakers x 10 utterances.

Layout: ``{TRAIN,TEST}/DR1..DR8/{speaker}/{SA1,SA2,SI*,SX*}.WAV`` where the WAV files are NIST SPHERE
(16 kHz, 16 bit), which soundfile reads. Copies differ in letter case (``train/dr1/fcjf0/sa1.wav``),
so every level is matched case-insensitively; the root may also be a folder holding ``TIMIT/`` or
``data/``. Converted copies that add ``SA1.WAV.wav`` beside the original are fine: only
``{SA|SI|SX}{n}.WAV`` names are utterances. ``.PHN/.WRD/.TXT`` transcriptions are not needed.

Labels: ``speaker`` (630 classes; the speaker folder name, e.g. ``FCJF0``; the paper's TIMIT-2 and
TIMIT-3) or ``dialect`` (8 classes). TIMIT's own TRAIN/TEST split is speaker-disjoint, which is useless
for speaker identity, so items carry no official split; the scenario's stratified 8:2 split gives 8
train and 2 test utterances per speaker.
"""

from __future__ import annotations

import re
from pathlib import Path

from pace.data.datasets import AudioDataset, Item, dataset
from pace.data.presets import Preset
from pace.data.layout import LayoutError, child, require_dir

LABELS = ("speaker", "dialect")
_DR = re.compile(r"^dr([1-8])$", re.IGNORECASE)
_SPEAKER = re.compile(r"^[fm][a-z]{3}[0-9]$", re.IGNORECASE)
_UTT = re.compile(r"^(sa|si|sx)[0-9]+\.wav$", re.IGNORECASE)


def _find_root(root: Path) -> Path:
    for cand in (root, child(root, "timit"), child(root, "data")):
        if cand is not None and cand.is_dir() and (child(cand, "train") or child(cand, "test")):
            return cand
    raise FileNotFoundError(f"TIMIT not found at {root}: expected TRAIN/ and TEST/ (any letter case), "
                            "each with DR1..DR8/<speaker>/*.WAV")


def load_timit(root: str | Path, label: str = "speaker") -> AudioDataset:
    if label not in LABELS:
        raise ValueError(f"TIMIT label must be one of {LABELS}, got {label!r}")
    root = Path(root)
    require_dir(root, "TIMIT root")
    base = _find_root(root)
    items, where = [], {}
    # both spellings may sit side by side in a merged copy, so take every matching folder
    for pdir in sorted(p for p in base.iterdir() if p.is_dir() and p.name.lower() in ("train", "test")):
        part = pdir.name.lower()
        for dr in sorted(p for p in pdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            m = _DR.match(dr.name)
            if not m:
                raise LayoutError(f"{dr}: expected dialect-region folders DR1..DR8, got {dr.name!r}")
            for spk in sorted(p for p in dr.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if not _SPEAKER.match(spk.name):
                    raise LayoutError(f"{spk}: speaker folder names look like FCJF0 (sex, initials, digit)")
                speaker = spk.name.upper()
                if speaker in where:
                    raise LayoutError(f"speaker {speaker} appears twice: {where[speaker]} and {spk}")
                where[speaker] = spk
                utts = sorted(p for p in spk.iterdir() if p.is_file() and _UTT.match(p.name))
                if not utts:
                    raise LayoutError(f"{spk}: no utterance files ({{SA,SI,SX}}<n>.WAV)")
                for u in utts:
                    lab = speaker if label == "speaker" else f"DR{m.group(1)}"
                    key = f"{part.upper()}/DR{m.group(1)}/{speaker}/{u.stem.upper()}"
                    items.append(Item(key=key, label=lab, path=u))
    if not items:
        raise FileNotFoundError(f"no TIMIT utterances under {base}")
    return AudioDataset(f"timit-{label}", items, description=f"TIMIT at {root}, label={label}")


_HINT = "TIMIT: TRAIN/ and TEST/ with DR1..DR8/<speaker>/*.WAV"


@dataset("timit", summary="TIMIT read speech: 630 speakers, 10 sentences each", labels=LABELS, presets=(
    Preset("timit2", "TIMIT speaker identity; 630 speakers in 315 sessions of 2 (paper)",
           {"label": "speaker"}, {"num_sessions": 315}, 630, 10, True, _HINT),
    Preset("timit3", "TIMIT speaker identity; 630 speakers in 210 sessions of 3 (paper)",
           {"label": "speaker"}, {"num_sessions": 210}, 630, 10, True, _HINT)))
def _from_config(cfg) -> AudioDataset:
    return load_timit(cfg.root, label=cfg.label)
