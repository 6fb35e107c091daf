"""Paired differences between methods (or variants) and which orderings the data support.

Two methods run on the same seeds and benchmarks give one difference per (benchmark, seed) unit. Their
mean, with a percentile bootstrap interval over units (resampled with replacement, a fixed generator
seed, so a report is reproducible), says whether the gap is larger than the spread between units. A
difference is *separable* when its interval excludes zero. The ranking orders methods by their mean
over units and groups them into tiers: a method joins the tier above when its paired difference to
that tier's first method is not separable.

Pure functions of the tidy rows (``pace.report.cells.tidy``): no store, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pace.report.cells import natural_key
from pace.report.tables import Table

UNIT = ("benchmark", "seed")
#: below this many units a percentile bootstrap interval is too narrow to trust (3 units of the same sign
#: always give an interval that excludes 0): the tables say so
FEW_UNITS = 6
FEW_NOTE = ("fewer than {n} paired units for {which}: a percentile bootstrap over so few units is narrower "
            "than the uncertainty (any consistent sign looks separable); read those rows as indicative, or "
            "pair over more units (--pair-over benchmark,seed across several benchmarks).")
LEVEL = 0.95
N_BOOT = 10_000


def bootstrap_mean_ci(diffs: np.ndarray, level: float = LEVEL, n_boot: int = N_BOOT,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (resampling units with replacement)."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return float("nan"), float("nan")
    if d.size == 1:
        return float(d[0]), float(d[0])
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@dataclass
class PairedDifference:
    """``other - reference`` over the units both ran."""

    reference: str
    other: str
    units: pd.DataFrame  # unit columns, reference, other, diff
    mean: float
    lo: float
    hi: float
    level: float
    #: units only one of the two ran (left out of the difference)
    unmatched: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.units)

    @property
    def separable(self) -> bool:
        return self.n > 1 and (self.lo > 0 or self.hi < 0)

    @property
    def wins(self) -> int:
        """Units where ``other`` is above ``reference``."""
        return int((self.units["diff"] > 0).sum())

    def sentence(self, metric: str = "last accuracy") -> str:
        if self.n == 0:
            return f"{self.other} and {self.reference} share no (benchmark, seed) unit: no paired difference."
        span = f"{self.mean:+.2f} points, {self.level:.0%} CI [{self.lo:+.2f}, {self.hi:+.2f}], n = {self.n}"
        if not self.separable:
            return (f"{self.other} vs {self.reference}: {span}; the data do not separate them "
                    f"({self.wins} of {self.n} units favour {self.other}).")
        better = self.other if self.mean > 0 else self.reference
        return f"{self.other} vs {self.reference}: {span}; {better} has the higher {metric} in this setting."


def _unit_frame(rows: pd.DataFrame, by: str, unit: tuple[str, ...]) -> pd.DataFrame:
    missing = [k for k in (by, *unit) if k not in rows.columns]
    if missing:
        raise ValueError(f"paired differences need the columns {', '.join(missing)} in the runs "
                         f"(have: {', '.join(rows.columns)}); group by {by!r} and pair over {', '.join(unit)}")
    # several runs of one method in one unit (a repeated trial) are averaged, never counted twice
    return rows.groupby([by, *unit], as_index=False)["value"].mean()


def paired_difference(rows: pd.DataFrame, by: str, reference: str, other: str,
                      unit: tuple[str, ...] = UNIT, level: float = LEVEL, n_boot: int = N_BOOT,
                      seed: int = 0) -> PairedDifference:
    """``other - reference`` per unit where both ran, its mean and bootstrap interval."""
    frame = _unit_frame(rows, by, unit)
    known = sorted(frame[by].unique(), key=natural_key)
    for name in (reference, other):
        if name not in known:
            raise ValueError(f"no runs with {by} = {name!r} (have: {', '.join(known)})")
    a = frame[frame[by] == reference].set_index(list(unit))["value"]
    b = frame[frame[by] == other].set_index(list(unit))["value"]
    both = a.index.intersection(b.index)
    unmatched = [" / ".join(map(str, u if isinstance(u, tuple) else (u,)))
                 for u in a.index.symmetric_difference(b.index)]
    units = pd.DataFrame({reference: a.loc[both], other: b.loc[both]})
    units["diff"] = units[other] - units[reference]
    units = units.reset_index().sort_values(list(unit), key=lambda s: s.map(natural_key)).reset_index(drop=True)
    d = units["diff"].to_numpy()
    lo, hi = bootstrap_mean_ci(d, level, n_boot, seed)
    mean = float(d.mean()) if d.size else float("nan")
    return PairedDifference(reference, other, units, mean, lo, hi, level, unmatched)


@dataclass
class Rank:
    rank: int
    name: str
    mean: float  # over the units it ran
    n: int
    tier: int
    #: paired difference to the first method of the tier above or its own tier (None for the first method):
    #: separable where this method starts a tier, not separable where it joins one
    to_tier_top: PairedDifference | None = None


def ranking(rows: pd.DataFrame, by: str, unit: tuple[str, ...] = UNIT, level: float = LEVEL,
            n_boot: int = N_BOOT, seed: int = 0) -> list[Rank]:
    """Methods by mean over units, highest first, in tiers of methods the data do not separate."""
    frame = _unit_frame(rows, by, unit)
    stats = frame.groupby(by)["value"].agg(["mean", "size"])
    order = sorted(stats.index, key=lambda m: (-stats.loc[m, "mean"], natural_key(m)))
    out: list[Rank] = []
    top, tier = None, 0
    for i, name in enumerate(order):
        diff = None if top is None else paired_difference(rows, by, top, name, unit, level, n_boot, seed)
        if diff is None or diff.separable:  # a new tier starts here
            tier, top = tier + 1, name
        out.append(Rank(i + 1, name, float(stats.loc[name, "mean"]), int(stats.loc[name, "size"]), tier, diff))
    return out


def paired_differences(rows: pd.DataFrame, by: str, reference: str, unit: tuple[str, ...] = UNIT,
                       level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, PairedDifference]:
    """Every other ``by`` value against ``reference`` (in natural order): what the table and the figure show."""
    frame = _unit_frame(rows, by, unit)
    others = [m for m in sorted(frame[by].unique(), key=natural_key) if m != reference]
    return {m: paired_difference(rows, by, reference, m, unit, level, n_boot, seed) for m in others}


def paired_table(rows: pd.DataFrame, by: str, reference: str, metric: str, unit: tuple[str, ...] = UNIT,
                 level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0,
                 diffs: dict[str, PairedDifference] | None = None) -> tuple[Table, list[str]]:
    """Every other method against ``reference``: per-unit differences, mean, interval, separable
    (``diffs``: those differences already computed by ``paired_differences``)."""
    frame = _unit_frame(rows, by, unit)
    others = [m for m in sorted(frame[by].unique(), key=natural_key) if m != reference]
    if reference not in set(frame[by]):
        raise ValueError(f"no runs with {by} = {reference!r} (have: {', '.join(others)})")
    units = sorted({tuple(map(str, u)) for u in frame[list(unit)].itertuples(index=False)},
                   key=lambda u: tuple(natural_key(x) for x in u))
    columns = [" / ".join(u) for u in units] + ["mean Δ", f"{level:.0%} CI", "n", "separable"]
    text, best, records, sentences = [], [], [], []
    for name in others:
        d = diffs[name] if diffs is not None else paired_difference(rows, by, reference, name, unit, level, n_boot,
                                                                     seed)
        per = {tuple(map(str, r[:len(unit)])): r[-1] for r in d.units[[*unit, "diff"]].itertuples(index=False)}
        row = [f"{per[u]:+.2f}" if u in per else "–" for u in units]
        row += [f"{d.mean:+.2f}" if d.n else "–", f"[{d.lo:+.2f}, {d.hi:+.2f}]" if d.n else "–", str(d.n),
                "yes" if d.separable else "no"]
        text.append(row)
        best.append([False] * len(row))
        records.append({"reference": reference, "other": name, "mean_diff": d.mean, "ci_lo": d.lo, "ci_hi": d.hi,
                        "level": level, "n": d.n, "separable": d.separable, "wins": d.wins})
        sentences.append(d.sentence(metric.replace("_", " ")))
    notes = [f"Δ = {by} − {reference!r} in points, paired per {' / '.join(unit)}; interval: percentile "
             f"bootstrap of the mean over units ({n_boot} resamples, seed {seed}); separable = the interval "
             "excludes 0."]
    few = [r["other"] for r in records if 0 < r["n"] < FEW_UNITS]
    if few:
        notes.append(FEW_NOTE.format(n=FEW_UNITS, which=", ".join(few)))
    title = f"{metric}: paired differences against {reference}"
    return Table(title, by, columns, others, text, best, notes, records), sentences


def ranking_table(ranks: list[Rank], metric: str, by: str) -> Table:
    rows, text, best, records = [], [], [], []
    for r in ranks:
        d = r.to_tier_top
        vs = "–" if d is None else f"{d.mean:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}] vs {d.reference}"
        rows.append(r.name)
        text.append([str(r.rank), f"{r.mean:.2f}", str(r.n), str(r.tier), vs])
        best.append([False, r.tier == 1, False, False, False])
        records.append({"name": r.name, "rank": r.rank, "mean": r.mean, "n": r.n, "tier": r.tier})
    notes = ["Methods in one tier are not separated by the data: each one's paired difference to the tier's "
             "first method has an interval that includes 0. Tier 1 in bold."]
    few = [r.name for r in ranks if r.to_tier_top is not None and 0 < r.to_tier_top.n < FEW_UNITS]
    if few:
        notes.append(FEW_NOTE.format(n=FEW_UNITS, which=", ".join(few)))
    return Table(f"{metric}: ranking", by, ["rank", "mean", "units", "tier", "Δ to tier top [CI]"], rows, text,
                 best, notes, records)
