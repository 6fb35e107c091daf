"""Free Spoken Digit Dataset: ``recordings/{digit}_{speaker}_{index}.wav`` (8 kHz, 3,000 clips).

Labels: ``digit`` (10 classes, coarse), ``speaker`` (6), ``digit_speaker`` (60, fine-grained).
The data set's own split: index 0-4 is test, 5-49 train.
"""

from __future__ import annotations

import re
from pathlib import Path

from pace.data.datasets import AudioDataset, Item, dataset, default_fsdd_root
from pace.data.presets import Preset

_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
LABELS = ("digit", "speaker", "digit_speaker")


def load_fsdd(root: str | Path, label: str = "digit") -> AudioDataset:
    if label not in LABELS:
        raise ValueError(f"fsdd label must be one of {LABELS}, got {label!r}")
    root = Path(root)
    rec = root / "recordings" if (root / "recordings").is_dir() else root
    if not rec.is_dir():
        raise FileNotFoundError(
            f"FSDD not found at {root} (expected {root}/recordings/*.wav); set data.root or PACE_FSDD_ROOT")
    items = []
    for path in sorted(rec.glob("*.wav")):
        m = _NAME.match(path.name)
        if not m:
            continue  # not an FSDD recording name; ignore stray files
        digit, speaker, index = m.group(1), m.group(2), int(m.group(3))
        lab = {"digit": digit, "speaker": speaker, "digit_speaker": f"{digit}_{speaker}"}[label]
        items.append(Item(key=path.name, label=lab, path=path, split="test" if index < 5 else "train"))
    if not items:
        raise FileNotFoundError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{i}}.wav) in {rec}")
    return AudioDataset(f"fsdd-{label}", items, description=f"FSDD at {root}, label={label}")


_HINT = "FSDD: recordings/*.wav (default $PACE_FSDD_ROOT or ../shared/datasets/fsdd)"


@dataset("fsdd", summary="Free Spoken Digit Dataset: 3,000 spoken digits by 6 speakers", labels=LABELS,
         root="optional", presets=(
             Preset("fsdd-digits", "FSDD spoken digits; 10 classes in 5 sessions of 2",
                    {"label": "digit"}, {"num_sessions": 5}, 10, 300, True, _HINT),
             Preset("fsdd-fine", "FSDD digit x speaker; 60 fine-grained classes in 10 sessions of 6",
                    {"label": "digit_speaker"}, {"num_sessions": 10}, 60, 50, True, _HINT)))
def _from_config(cfg) -> AudioDataset:
    return load_fsdd(cfg.root or default_fsdd_root(), label=cfg.label)
