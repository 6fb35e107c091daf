"""Frontend features for a whole data set, computed once per clip and reused.

The result is cached by (data set fingerprint, frontend settings); bad files either stop the run
with an error naming the file, or, with ``skip_bad``, are listed and left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from pace.cache import FeatureCache
from pace.data.audio import AudioError, samples_used_by
from pace.data.datasets import AudioDataset, Item


@dataclass
class FeatureTable:
    x: torch.Tensor  # (N, *frontend.shape), one row per kept item
    items: list[Item]  # the kept items, aligned with x
    bad: list[tuple[str, str]] = field(default_factory=list)  # (item key, reason) of skipped files


def extract_features(dataset: AudioDataset, frontend, cache: FeatureCache | None = None,
                     skip_bad: bool = False, progress: bool = True) -> FeatureTable:
    key = f"features|{dataset.name}|{dataset.fingerprint()}|{frontend.key()}|skip_bad={skip_bad}"

    def compute() -> tuple[dict[str, torch.Tensor], list[tuple[str, str]]]:
        rows, kept, bad = [], [], []
        used = samples_used_by(frontend)  # a very long clip is read only in part
        for i, item in enumerate(tqdm(dataset.items, desc=f"features {dataset.name}", unit="clip",
                                      disable=not progress, leave=False)):
            try:
                rows.append(frontend(dataset.waveform(item, use_samples=used)))
                kept.append(i)
            except AudioError as exc:
                if not skip_bad:
                    raise
                bad.append((item.key, exc.reason))
        if not rows:
            raise AudioError(dataset.name, "no readable clips")
        return {"x": torch.stack(rows), "kept": torch.tensor(kept, dtype=torch.long)}, bad

    hit = cache.load(key) if cache is not None else None
    if hit is not None:
        tensors, meta = hit
        cache.hits += 1
        bad = [tuple(b) for b in json.loads(meta.get("bad", "[]"))]
    else:
        if progress:  # often the first long stage of a run: say so on stdout before its bar starts
            print(f"featurising {len(dataset.items)} clips of {dataset.name} (once: cached for later runs)",
                  flush=True)
        tensors, bad = compute()
        if cache is not None:
            cache.misses += 1
            cache.save(key, tensors, {"bad": json.dumps(bad)})
    items = [dataset.items[i] for i in tensors["kept"].tolist()]
    return FeatureTable(x=tensors["x"], items=items, bad=bad)
