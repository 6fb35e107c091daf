"""Deterministic procedural audio for the embedded default and for tests that must run anywhere.

Each class has its own generator parameters (drawn from the data set seed and the class index) and
each clip adds its own jitter (drawn from the seed and the clip index), so the same arguments always
give the same waveforms, bit for bit, with no files on disk.

- ``coarse``: classes differ in kind: harmonic tones, band-limited noise bursts, chirps, AM tones
  and click trains, with class-specific frequencies and envelopes (easy, like ESC-50 categories).
- ``fine``: every class is a harmonic tone in one narrow pitch range; classes differ only in their
  spectral envelope and attack/decay (hard, like speaker or singer identity).
"""

from __future__ import annotations

import numpy as np
import torch

from pace.data.datasets import AudioDataset, Item, dataset

SR = 16_000
#: bump when the generator changes: it is part of the data set name, hence of every cache key
VERSION = 2
KINDS = ("harmonic", "noise", "chirp", "am", "clicks")


def _class_params(seed: int, c: int, variant: str) -> dict:
    rng = np.random.default_rng([seed, c, 0 if variant == "coarse" else 1])
    if variant == "fine":
        # one shared timbre plus a small class-specific deviation: classes overlap like voices do
        base = np.random.default_rng([seed, 10**6]).dirichlet(np.ones(8))
        w = np.clip(base + 0.06 * rng.standard_normal(8), 0.005, None)
        return {"kind": "harmonic", "f0": float(rng.uniform(190, 210)), "weights": w / w.sum() * 2.0,
                "attack": float(rng.uniform(0.02, 0.08)), "decay": float(rng.uniform(1.0, 2.5)),
                "jitter": 0.35}
    kind = KINDS[c % len(KINDS)]
    return {"kind": kind, "f0": float(rng.uniform(100, 1500)), "f1": float(rng.uniform(200, 5000)),
            "weights": rng.dirichlet(np.ones(6)) * 2.0, "attack": float(rng.uniform(0.005, 0.1)),
            "decay": float(rng.uniform(0.5, 6.0)), "bw": float(rng.uniform(100, 1500)),
            "rate": float(rng.uniform(3, 30))}


def _envelope(t: np.ndarray, attack: float, decay: float) -> np.ndarray:
    return np.minimum(t / attack, 1.0) * np.exp(-decay * t)


def _render(p: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    f0 = p["f0"] * rng.uniform(0.97, 1.03)
    kind = p["kind"]
    if kind == "harmonic":
        # per-clip timbre jitter (fine variant) blurs the class boundaries
        weights = p["weights"] * np.exp(p.get("jitter", 0.0) * rng.standard_normal(len(p["weights"])))
        x = sum(w * np.sin(2 * np.pi * f0 * (k + 1) * t + rng.uniform(0, 2 * np.pi))
                for k, w in enumerate(weights))
    elif kind == "noise":
        spec = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / SR)
        spec *= np.exp(-0.5 * ((freqs - p["f1"]) / p["bw"]) ** 2)
        x = np.fft.irfft(spec, n)
    elif kind == "chirp":
        f1 = p["f1"] * rng.uniform(0.97, 1.03)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1]))
        x = np.sin(phase)
    elif kind == "am":
        x = (1 + 0.9 * np.sin(2 * np.pi * p["rate"] * t)) * np.sin(2 * np.pi * f0 * t)
    else:  # clicks: a train of short decaying bursts at a class-specific rate
        x = np.zeros(n)
        period = max(int(SR / p["rate"]), 1)
        burst = np.exp(-np.arange(200) / 20.0) * np.sin(2 * np.pi * f0 * np.arange(200) / SR)
        for s in range(int(rng.integers(0, period)), n - 200, period):
            x[s:s + 200] += burst
    x = x * _envelope(t, p["attack"], p["decay"])
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.3, 0.9)
    x = x + rng.normal(0, 0.003, n)  # a noise floor so no clip is digitally silent
    return x.astype(np.float32)


def make_synthetic(num_classes: int = 10, clips_per_class: int = 20, seconds: float = 1.0,
                   variant: str = "coarse", seed: int = 1234) -> AudioDataset:
    if variant not in ("coarse", "fine"):
        raise ValueError(f"synthetic label/variant must be 'coarse' or 'fine', got {variant!r}")
    n = int(seconds * SR)
    params = [_class_params(seed, c, variant) for c in range(num_classes)]
    items = [Item(key=f"c{c:03d}_{i:04d}", label=f"{variant}{c:03d}")
             for c in range(num_classes) for i in range(clips_per_class)]

    def load(item: Item) -> torch.Tensor:
        c, i = int(item.key[1:4]), int(item.key[5:])
        rng = np.random.default_rng([seed, c, i, 7])
        return torch.from_numpy(_render(params[c], n, rng))

    return AudioDataset(f"synthetic-v{VERSION}-{variant}-{num_classes}x{clips_per_class}-{seconds:g}s-s{seed}", items,
                        loader=load, description=f"procedural {variant} audio, seed {seed}")


@dataset("synthetic", summary="procedural audio generated from a seed (no files): tones, noise, chirps, clicks",
         labels=("coarse", "fine"), root="unused")
def _from_config(cfg) -> AudioDataset:
    return make_synthetic(num_classes=cfg.synthetic_classes, clips_per_class=cfg.synthetic_clips_per_class,
                          seconds=cfg.synthetic_seconds, variant=cfg.label, seed=cfg.synthetic_seed)
