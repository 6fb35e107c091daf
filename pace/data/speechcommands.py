"""Speech Commands v2: 105,829 one-second 16 kHz utterances of 35 words (CC BY 4.0).

Layout (the extracted ``speech_commands_v0.02`` archive): one folder per word holding
``{speaker hash}_nohash_{n}.wav``, plus ``validation_list.txt`` and ``testing_list.txt`` (one
``word/file.wav`` per line; every other clip is training data) and ``_background_noise_/`` (long noise
recordings, not a class; left out). Label: the word. The official lists give ``Item.split``
(``val``/``test``/``train``), used with ``scenario.official_split: true``; the paper uses a seeded 8:2.

torchaudio's ``SPEECHCOMMANDS`` is not used: in torchaudio 2.11 it reads audio through
``torchaudio.load``, which needs torchcodec and FFmpeg. Files are read with soundfile like every
other data set here.
"""

from __future__ import annotations

import os
from pathlib import Path

from pace.data.datasets import AudioDataset, Item, dataset
from pace.data.presets import Preset
from pace.data.layout import LayoutError, require_dir

WORDS = ("backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four",
         "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right",
         "seven", "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero")
NOISE = "_background_noise_"
LISTS = {"validation_list.txt": "val", "testing_list.txt": "test"}


def load_speechcommands(root: str | Path) -> AudioDataset:
    root = Path(root)
    require_dir(root, "Speech Commands root (expected one folder per word and the split lists)")
    clips: dict[str, Path] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir() or entry.name == NOISE or entry.name.startswith((".", "__MACOSX")):
            continue
        wavs = sorted(e.name for e in os.scandir(entry.path) if e.is_file() and e.name.endswith(".wav"))
        if not wavs:
            continue
        if entry.name not in WORDS:
            raise LayoutError(f"{root / entry.name}: folder is not one of the 35 Speech Commands v2 words "
                              f"({', '.join(WORDS)}); is this another version or a mixed-in folder?")
        for w in wavs:
            clips[f"{entry.name}/{w}"] = Path(entry.path) / w
    if not clips:
        raise FileNotFoundError(f"no word folders with .wav files under {root}")
    split: dict[str, str] = {}
    for fname, tag in LISTS.items():
        lst = root / fname
        if not lst.is_file():
            raise FileNotFoundError(f"split list {lst} is missing (it ships with Speech Commands v2)")
        for lineno, line in enumerate(lst.read_text().splitlines(), start=1):
            rel = line.strip()
            if not rel:
                continue
            if rel not in clips:
                raise FileNotFoundError(f"{lst}:{lineno}: listed clip {rel!r} is not under {root}")
            if split.setdefault(rel, tag) != tag:
                raise LayoutError(f"{lst}:{lineno}: clip {rel!r} is also in the {split[rel]} list")
    items = [Item(key=rel, label=rel.split("/", 1)[0], path=path, split=split.get(rel, "train"))
             for rel, path in clips.items()]
    return AudioDataset("sc2", items, description=f"Speech Commands v2 at {root}")


@dataset("speechcommands", summary="Speech Commands v2: 1 s keywords, 35 words", presets=(
    Preset("sc2", "Speech Commands v2 keywords; 35 words in 7 sessions of 5 (paper)",
           {}, {"num_sessions": 7}, 35, 105829 / 35, False,
           "speech_commands_v0.02: one folder per word, validation_list.txt, testing_list.txt"),))
def _from_config(cfg) -> AudioDataset:
    return load_speechcommands(cfg.root)
