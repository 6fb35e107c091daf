"""Paired differences with bootstrap intervals, on results where the answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pace.report.paired import bootstrap_mean_ci, paired_difference, paired_table, ranking, ranking_table
from pace.report.tables import to_markdown

BENCHMARKS = ("fsdd-speaker-few", "drumkits", "cross-soundfont")
SEEDS = ("0", "1", "2")


def _rows(effects: dict[str, float], noise: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Tidy rows: each (benchmark, seed) unit has its own level (benchmarks and seeds differ a lot),
    each method adds its effect plus small per-run noise. Paired differences cancel the unit level."""
    rng = np.random.default_rng(seed)
    out = []
    for b_i, bench in enumerate(BENCHMARKS):
        for s in SEEDS:
            level = 40.0 + 20.0 * b_i + rng.normal(0, 8)  # unit spread far larger than the effects
            for name, effect in effects.items():
                out.append({"variant": name, "benchmark": bench, "seed": s,
                            "value": level + effect + rng.normal(0, noise)})
    return pd.DataFrame(out)


def test_a_real_gap_is_separable_and_no_gap_is_not():
    rows = _rows({"ranpac": 0.0, "pace": 3.0, "twin": 0.0})
    gap = paired_difference(rows, "variant", "ranpac", "pace")
    assert gap.n == 9 and gap.separable and gap.lo > 0 and abs(gap.mean - 3.0) < 1.0
    none = paired_difference(rows, "variant", "ranpac", "twin")
    assert not none.separable and none.lo < 0 < none.hi
    # unpaired, the same data cannot tell the 3-point gap from the 8-point spread between units
    a, b = (rows[rows.variant == v]["value"].to_numpy() for v in ("ranpac", "pace"))
    assert abs(b.mean() - a.mean()) < 2 * np.sqrt(a.var(ddof=1) / 9 + b.var(ddof=1) / 9)
    assert "pace has the higher" in gap.sentence() and "do not separate" in none.sentence()


def test_the_difference_is_exact_on_hand_made_units():
    rows = pd.DataFrame([{"variant": v, "benchmark": "b", "seed": s, "value": x}
                         for v, s, x in [("a", "0", 50.0), ("a", "1", 60.0), ("a", "2", 70.0),
                                         ("c", "0", 52.0), ("c", "1", 61.0), ("c", "2", 73.0),
                                         ("c", "3", 99.0)]])  # seed 3: only c ran it
    d = paired_difference(rows, "variant", "a", "c")
    assert d.units["diff"].tolist() == [2.0, 1.0, 3.0] and d.mean == 2.0 and d.unmatched == ["b / 3"]
    # the bootstrap means lie between the smallest and largest unit difference
    assert 1.0 <= d.lo <= d.mean <= d.hi <= 3.0 and d.separable and d.wins == 3


def test_bootstrap_interval_is_reproducible_and_narrows_with_more_units():
    rng = np.random.default_rng(1)
    small, large = rng.normal(1.0, 2.0, 9), rng.normal(1.0, 2.0, 900)
    assert bootstrap_mean_ci(small, seed=3) == bootstrap_mean_ci(small, seed=3)
    lo_s, hi_s = bootstrap_mean_ci(small)
    lo_l, hi_l = bootstrap_mean_ci(large)
    assert hi_l - lo_l < (hi_s - lo_s) / 5
    assert bootstrap_mean_ci(np.array([2.5])) == (2.5, 2.5)


def test_ranking_groups_what_the_data_do_not_separate():
    rows = _rows({"pace": 5.0, "ranpac_fsa": 5.0, "simplecil": -6.0, "l2p": -30.0})
    ranks = ranking(rows, "variant")
    tiers = {r.name: r.tier for r in ranks}
    assert tiers["pace"] == tiers["ranpac_fsa"] == 1
    assert tiers["simplecil"] == 2 and tiers["l2p"] == 3
    assert [r.rank for r in ranks] == [1, 2, 3, 4] and ranks[0].to_tier_top is None
    md = to_markdown(ranking_table(ranks, "last_accuracy", "variant"))
    assert "| l2p | 4 |" in md


def test_paired_table_lists_every_unit_and_says_which_differences_hold():
    rows = _rows({"pace": 0.0, "ranpac_fsa": 0.0, "simplecil": -10.0})
    table, sentences = paired_table(rows, "variant", "pace", "last_accuracy")
    assert table.rows == ["ranpac_fsa", "simplecil"]
    assert len(table.columns) == 9 + 4 and table.cells[1][-1] == "yes" and table.cells[0][-1] == "no"
    assert any("simplecil vs pace" in s and "pace has the higher last accuracy" in s for s in sentences)
    assert not any("fewer than 6 paired units" in n for n in table.footnotes)  # 9 units each
    few, _ = paired_table(rows[rows["benchmark"] == rows["benchmark"].iloc[0]], "variant", "pace", "last_accuracy")
    assert any(n.startswith("fewer than 6 paired units for ranpac_fsa, simplecil:") for n in few.footnotes)
    with pytest.raises(ValueError, match="no runs with variant = 'hideprompt'"):
        paired_difference(rows, "variant", "pace", "hideprompt")
    with pytest.raises(ValueError, match="need the columns seed"):
        paired_table(rows.drop(columns="seed"), "variant", "pace", "last_accuracy")
