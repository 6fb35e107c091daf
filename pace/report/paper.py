"""Our runs beside the PACE paper's published numbers (``pace report --against paper``).

The paper's cells live in ``paper_results.yaml`` next to this module (Li, Zhou, Wang, ICLR 2026, as
recovered in ``pace_method.md`` section 4): per cell the table, row, column, value, source tags and a
note where the recovery is doubtful (``uncertain``) or read off a plot (``approximate``); per table
the setting it was measured in and a *selector* per row and column saying which of our runs it
stands for. ``load_paper`` reads and checks it; everything else is pure.

``paper_table`` takes our tidy runs (``pace.report.cells.tidy``: one row per run, ``seed``, ``value``
and one text column per tag or dotted param; ``paper_rows`` builds that frame from a study's runs
with every key the matcher reads) and returns a ``Table`` with one line per (our group, paper cell).

Matching rules. A group is the runs that share the ``by`` key (variant, method or configuration) and
every matching key the rows carry (benchmark, backbone, data and scenario params, config params);
its seeds give ``mean ± std (n)``.

1. Row. A paper row (selector: variants, method, config) names a group when the group's ``variant``
   tag is one of the row's variant names (our ablation specs' names, e.g. ``wo_msa``, ``rho_0.94``),
   or when the group has no variant (unset or ``default``) and its method is the row's. Names alone
   can be ambiguous (``ranpac`` is RanPAC with FSA in sweeps/paper_table2.yaml, without it in
   ablations/fsdd_methods.yaml), so the row's ``method`` and ``config`` (e.g. ``method.fsa.enabled``)
   are then checked against the group's logged params: rows whose conditions all hold win, then rows
   whose only unknowns are params the runs do not log (a note lists them); only when none holds are
   the named rows shown, each with the param that differs.
2. Benchmark. From the params ``data.dataset`` (+ ``data.label``) and ``scenario.num_sessions`` when
   logged: a paper benchmark of that data set and label, the one with the same session count (TIMIT-2
   vs TIMIT-3 differ only there); a different count is a setting difference. Without those params, the
   ``benchmark`` tag (an ablation's benchmark key, ``fsdd_fine`` = ``fsdd-fine``; or a plain run's
   ``dataset-label``). A data set the YAML lists under ``proxies`` (FSDD for TIMIT or SC2) is placed
   beside the paper benchmark it stands in for, never differenced; any other data set (drum kits,
   NSynth) has no counterpart and gets one line saying so.
3. Setting. The table's backbone (``backbone.name`` param, else the ``backbone`` tag; eat-base
   throughout), a pretrained checkpoint (``backbone.checkpoint`` set, where logged: eat-base without
   one is random init) and the ``setting.params`` (8:2 split, equal sessions, all clips, 512 frames)
   must hold. A backbone that is not logged counts as different.
4. Metric. Only cells of the requested metric are used (A_T = ``last_accuracy`` for the accuracy
   tables; Fig. 3 also has first/new-task accuracy, Fig. 6a the probe's CKA); cells marked
   ``compare: false`` (averages, t-SNE distances, per-session values, time ratios) never are.

Where all of 1-4 hold the line has ``ours − paper`` = our mean minus the paper's number, ± our sample
std over seeds (the paper reports neither seeds nor a spread); otherwise ``–`` and the ``setting``
column names each difference (``backbone whisper-tiny ≠ eat-base``). ``‡`` marks paper numbers the
doc doubts, with the doc's reason in a footnote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

from pace.report.cells import Cell, duplicate_seed_notes, natural_key, summarize, tidy
from pace.report.read import MISSING, as_text, key_column
from pace.report.tables import Table

PAPER_FILE = Path(__file__).with_name("paper_results.yaml")
ANY = "any"
#: variant tags that name no variant: such groups are identified by their method
UNSET_VARIANTS = frozenset({MISSING, "default"})
#: how a param logged as None reads back
_UNSET_TEXT = frozenset({"None", "none", "null", "~"})
#: keys the matcher reads besides the YAML's setting params and row conditions
BASE_KEYS = ("variant", "method", "method.name", "benchmark", "backbone", "backbone.name", "backbone.checkpoint",
             "data.dataset", "data.label", "scenario.num_sessions")
FLAG = "‡"
COLUMNS = ["paper table", "paper row", "paper column", "paper", "source", "ours", "ours − paper", "setting"]
SAME = "as in the paper"


class PaperDataError(ValueError):
    """paper_results.yaml is malformed; the message names the file and the field."""


# =============================================================================================
# The data file


@dataclass(frozen=True)
class Selector:
    """Which of our runs a paper row/column stands for (see the YAML's header)."""

    variants: tuple[str, ...] | None = ()  # None: any variant of ``methods``
    methods: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    benchmark: str | None = None
    metric: str | None = None
    compare: bool = True
    why: tuple[str, ...] = ()

    def then(self, other: "Selector", given: frozenset[str]) -> "Selector":
        """``other`` on top of this one: the fields ``other`` sets win, config merges per key."""
        return Selector(
            variants=other.variants if "variants" in given else self.variants,
            methods=other.methods if "method" in given else self.methods,
            config={**self.config, **other.config},
            benchmark=other.benchmark if "benchmark" in given else self.benchmark,
            metric=other.metric if "metric" in given else self.metric,
            compare=other.compare if "compare" in given else self.compare,
            why=self.why + other.why)


@dataclass(frozen=True)
class Benchmark:
    key: str
    name: str
    dataset: str
    label: str | None
    num_sessions: int
    classes: int | None = None


@dataclass(frozen=True)
class Proxy:
    key: str
    dataset: str
    label: str | None
    stands_for: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Setting:
    backbone: str
    pretrained: bool
    metric: str
    unit: str
    params: dict[str, Any]
    text: dict[str, str]  # split, sessions, seeds: as the doc words them

    def describe(self) -> str:
        extra = "; ".join(self.text[k] for k in ("split", "sessions", "seeds") if self.text.get(k))
        return (f"{self.backbone}{' (pretrained)' if self.pretrained else ''}, {self.metric} in {self.unit}"
                + (f"; {extra}" if extra else ""))


@dataclass(frozen=True)
class PaperTable:
    key: str
    title: str
    section: str
    setting: Setting
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    decimals: int = 2
    note: str = ""

    @property
    def short(self) -> str:
        return self.title.split(":")[0]


@dataclass(frozen=True)
class PaperCell:
    table: str
    row: str
    column: str
    value: float
    text: str  # the value as printed
    source: tuple[str, ...]
    match: Selector
    note: str = ""
    uncertain: bool = False
    approximate: bool = False
    relative_pct: float | None = None

    @property
    def flagged(self) -> bool:
        return self.uncertain or self.approximate


@dataclass(frozen=True)
class PaperResults:
    path: Path
    paper: dict[str, Any]
    sources: dict[str, str]
    setting: Setting
    benchmarks: dict[str, Benchmark]
    proxies: dict[str, Proxy]
    tables: dict[str, PaperTable]
    cells: tuple[PaperCell, ...]

    def table_cells(self, key: str) -> list[PaperCell]:
        return [c for c in self.cells if c.table == key]

    def keys(self) -> list[str]:
        """Every tag or param the matcher reads: ask ``tidy`` for those the runs have."""
        keys = dict.fromkeys(BASE_KEYS)
        for t in self.tables.values():
            keys.update(dict.fromkeys(t.setting.params))
        for c in self.cells:
            keys.update(dict.fromkeys(c.match.config))
        return list(keys)


_SELECTOR_FIELDS = frozenset({"variants", "method", "config", "benchmark", "metric", "compare", "why"})
_CELL_FIELDS = frozenset({"table", "row", "column", "value", "source", "note", "uncertain", "approximate",
                          "relative_pct"})
_SETTING_FIELDS = frozenset({"backbone", "pretrained", "metric", "unit", "params", "split", "sessions", "seeds"})
_TABLE_FIELDS = frozenset({"title", "section", "note", "decimals", "setting", "match", "rows", "columns"})
_TOP_FIELDS = frozenset({"paper", "sources", "setting", "benchmarks", "proxies", "tables", "cells"})


class _Reader:
    """Typed field access that fails with the file and the field's path."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, msg: str) -> PaperDataError:
        return PaperDataError(f"{self.path}: {where}: {msg}")

    def mapping(self, v: Any, where: str, allowed: frozenset[str] | None = None) -> dict:
        if not isinstance(v, dict):
            raise self.fail(where, f"expected a mapping, got {type(v).__name__}")
        if allowed is not None:
            unknown = sorted(str(k) for k in v if k not in allowed)
            if unknown:
                raise self.fail(where, f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
        return v

    def need(self, d: dict, key: str, where: str) -> Any:
        if key not in d or d[key] is None or d[key] == "":
            raise self.fail(where, f"missing field {key!r}")
        return d[key]

    def text(self, v: Any, where: str) -> str:
        if not isinstance(v, str) or not v.strip():
            raise self.fail(where, f"expected a non-empty string (quote labels such as '0.90'), got {v!r}")
        return v

    def names(self, v: Any, where: str) -> tuple[str, ...]:
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not items:
            raise self.fail(where, f"expected a name or a non-empty list of names, got {v!r}")
        return tuple(self.text(x, where) for x in items)

    def number(self, v: Any, where: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise self.fail(where, f"expected a finite number, got {v!r}")
        return float(v)

    def flag(self, v: Any, where: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(where, f"expected true or false, got {v!r}")
        return v


def _selector(r: _Reader, raw: Any, where: str, benchmarks: dict[str, Benchmark]) -> tuple[Selector, frozenset]:
    d = {} if raw is None else r.mapping(raw, where, _SELECTOR_FIELDS)
    variants: tuple[str, ...] | None = ()
    if "variants" in d:
        variants = None if d["variants"] == ANY else r.names(d["variants"], f"{where}.variants")
    methods = r.names(d["method"], f"{where}.method") if "method" in d else ()
    config = r.mapping(d.get("config") or {}, f"{where}.config")
    for k, v in config.items():
        r.text(k, f"{where}.config")
        if isinstance(v, dict):
            raise r.fail(f"{where}.config.{k}", "expected a value or a list of values")
    bench = d.get("benchmark")
    if bench is not None and bench not in benchmarks:
        raise r.fail(f"{where}.benchmark", f"unknown benchmark {bench!r} (known: {', '.join(benchmarks)})")
    metric = r.text(d["metric"], f"{where}.metric") if "metric" in d else None
    compare = r.flag(d["compare"], f"{where}.compare") if "compare" in d else True
    why = (r.text(d["why"], f"{where}.why"),) if "why" in d else ()
    return (Selector(variants, methods, dict(config), bench, metric, compare, why), frozenset(d))


def _setting(r: _Reader, raw: Any, where: str, base: Setting | None = None) -> Setting:
    d = r.mapping(raw or {}, where, _SETTING_FIELDS)
    if base is None:
        for key in ("backbone", "metric"):
            r.need(d, key, where)
    params = r.mapping(d.get("params") or {}, f"{where}.params")
    return Setting(
        backbone=r.text(d["backbone"], f"{where}.backbone") if "backbone" in d else base.backbone,
        pretrained=r.flag(d["pretrained"], f"{where}.pretrained") if "pretrained" in d
        else (base.pretrained if base else False),
        metric=r.text(d["metric"], f"{where}.metric") if "metric" in d else base.metric,
        unit=str(d.get("unit", base.unit if base else "")),
        params={**(base.params if base else {}), **params},
        text={**(base.text if base else {}), **{k: str(d[k]) for k in ("split", "sessions", "seeds") if k in d}})


def load_paper(path: str | Path | None = None) -> PaperResults:
    """Read and check ``paper_results.yaml`` (default: the one shipped with pace)."""
    path = Path(path) if path is not None else PAPER_FILE
    r = _Reader(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PaperDataError(f"{path}: no such file (the paper's numbers ship as pace/report/paper_results.yaml)") \
            from None
    except yaml.YAMLError as exc:
        raise PaperDataError(f"{path}: not valid YAML: {exc}") from None
    top = r.mapping(raw, "top level", _TOP_FIELDS)
    for key in ("setting", "benchmarks", "tables", "cells"):
        r.need(top, key, "top level")
    sources = {str(k): str(v) for k, v in r.mapping(top.get("sources") or {}, "sources").items()}
    setting = _setting(r, top["setting"], "setting")

    benchmarks: dict[str, Benchmark] = {}
    for key, b in r.mapping(top["benchmarks"], "benchmarks").items():
        where = f"benchmarks.{key}"
        b = r.mapping(b, where)
        n = r.number(r.need(b, "num_sessions", where), f"{where}.num_sessions")
        benchmarks[str(key)] = Benchmark(str(key), r.text(r.need(b, "name", where), f"{where}.name"),
                                         r.text(r.need(b, "dataset", where), f"{where}.dataset"),
                                         b.get("label"), int(n), b.get("classes"))

    proxies: dict[str, Proxy] = {}
    for key, p in r.mapping(top.get("proxies") or {}, "proxies").items():
        where = f"proxies.{key}"
        p = r.mapping(p, where, frozenset({"dataset", "label", "stands_for", "why"}))
        stands = r.names(r.need(p, "stands_for", where), f"{where}.stands_for")
        for s in stands:
            if s not in benchmarks:
                raise r.fail(f"{where}.stands_for", f"unknown benchmark {s!r} (known: {', '.join(benchmarks)})")
        proxies[str(key)] = Proxy(str(key), r.text(r.need(p, "dataset", where), f"{where}.dataset"), p.get("label"),
                                  stands, r.text(r.need(p, "why", where), f"{where}.why"))

    tables: dict[str, PaperTable] = {}
    selectors: dict[str, tuple[tuple[Selector, frozenset], dict, dict]] = {}
    for key, t in r.mapping(top["tables"], "tables").items():
        where = f"tables.{key}"
        t = r.mapping(t, where, _TABLE_FIELDS)
        rows = r.mapping(r.need(t, "rows", where), f"{where}.rows")
        cols = r.mapping(r.need(t, "columns", where), f"{where}.columns")
        for label in list(rows) + list(cols):
            r.text(label, f"{where} row/column label")
        tset = _setting(r, t.get("setting"), f"{where}.setting", setting)
        decimals = t.get("decimals", 2)
        if isinstance(decimals, bool) or not isinstance(decimals, int) or decimals < 0:
            raise r.fail(f"{where}.decimals", f"expected a whole number >= 0, got {decimals!r}")
        tables[str(key)] = PaperTable(str(key), r.text(r.need(t, "title", where), f"{where}.title"),
                                      str(t.get("section", "")), tset, tuple(rows), tuple(cols), decimals,
                                      str(t.get("note", "")))
        base = Selector(metric=tset.metric)
        selectors[str(key)] = (
            (base.then(*_selector(r, t.get("match"), f"{where}.match", benchmarks)), frozenset()),
            {lab: _selector(r, s, f"{where}.rows.{lab}", benchmarks) for lab, s in rows.items()},
            {lab: _selector(r, s, f"{where}.columns.{lab}", benchmarks) for lab, s in cols.items()})

    cells: list[PaperCell] = []
    seen: set[tuple[str, str, str]] = set()
    raw_cells = top["cells"]
    if not isinstance(raw_cells, list):
        raise r.fail("cells", "expected a list of cells")
    for i, c in enumerate(raw_cells):
        where = f"cells[{i}]"
        c = r.mapping(c, where, _CELL_FIELDS)
        table = r.need(c, "table", where)
        if table not in tables:
            raise r.fail(f"{where}.table", f"unknown table {table!r} (known: {', '.join(tables)})")
        row = r.text(r.need(c, "row", where), f"{where}.row")
        col = r.text(r.need(c, "column", where), f"{where}.column")
        where = f"{where} ({table} / {row} / {col})"
        t = tables[table]
        if row not in t.rows:
            raise r.fail(f"{where}.row", f"{row!r} is not a row of {table} (rows: {', '.join(t.rows)})")
        if col not in t.columns:
            raise r.fail(f"{where}.column", f"{col!r} is not a column of {table} (columns: {', '.join(t.columns)})")
        if (table, row, col) in seen:
            raise r.fail(where, "a second cell for this table, row and column")
        seen.add((table, row, col))
        raw_value = r.need(c, "value", where)
        value = r.number(raw_value, f"{where}.value")
        source = r.names(r.need(c, "source", where), f"{where}.source")
        unknown = [s for s in source if sources and s not in sources]
        if unknown:
            raise r.fail(f"{where}.source", f"unknown source tag(s) {', '.join(unknown)} (known: {', '.join(sources)})")
        uncertain = r.flag(c["uncertain"], f"{where}.uncertain") if "uncertain" in c else False
        approximate = r.flag(c["approximate"], f"{where}.approximate") if "approximate" in c else False
        note = str(c.get("note") or "")
        if (uncertain or approximate) and not note:
            raise r.fail(f"{where}.note", "an uncertain or approximate cell needs a note saying why")
        rel = r.number(c["relative_pct"], f"{where}.relative_pct") if "relative_pct" in c else None
        (tsel, _), rsels, csels = selectors[table]
        match = tsel.then(*rsels[row]).then(*csels[col])
        if match.compare:
            if match.benchmark is None:
                raise r.fail(where, "no benchmark for this cell (set it on its row or column, or compare: false)")
            if match.variants == () and not match.methods:
                raise r.fail(where, "no variants or method name this cell's runs (or set compare: false)")
            if match.variants is None and not match.methods:
                raise r.fail(where, "variants: any needs a method")
        elif not (match.why or note):
            raise r.fail(where, "compare: false needs a why (on the table, row or column) or a note")
        text = str(raw_value) if isinstance(raw_value, int) else f"{value:.{t.decimals}f}"
        cells.append(PaperCell(table, row, col, value, text, source, match, note, uncertain, approximate, rel))
    return PaperResults(path, dict(top.get("paper") or {}), sources, setting, benchmarks, proxies, tables,
                        tuple(cells))


# =============================================================================================
# Matching


def _known(v: Any) -> str | None:
    t = as_text(v)
    return None if t == MISSING else t


def _satisfies(text: str | None, expected: Any) -> bool | None:
    """Whether a logged value (text) is the expected one; None when nothing is logged."""
    if text is None:
        return None
    if isinstance(expected, list):
        return any(_satisfies(text, e) for e in expected)
    if expected is None:
        return text in _UNSET_TEXT
    if isinstance(expected, bool):
        return text.strip().lower() == str(expected).lower()
    if isinstance(expected, (int, float)):
        try:
            return math.isclose(float(text), float(expected), rel_tol=0, abs_tol=1e-9)
        except ValueError:
            return False
    return text == str(expected)


def _show(expected: Any) -> str:
    if isinstance(expected, list):
        return " or ".join(_show(e) for e in expected)
    if expected is None:
        return "unset"
    if isinstance(expected, bool):
        return str(expected).lower()
    return str(expected)


def _method(g: dict[str, str]) -> str | None:
    return _known(g.get("method.name")) or _known(g.get("method"))


def _names(g: dict[str, str], sel: Selector) -> bool:
    """Rule 1: the row names this group (by variant tag, or by method when the group has no variant)."""
    variant, method = _known(g.get("variant")), _method(g)
    if sel.variants is None:
        return method is not None and method in sel.methods
    if variant is not None and variant not in UNSET_VARIANTS:
        return variant in sel.variants
    return method is not None and method in sel.methods


def _conditions(g: dict[str, str], sel: Selector) -> tuple[list[str], list[str]]:
    """(what contradicts the row's method and config, the keys the group does not log)."""
    differ, unchecked = [], []
    method = _method(g)
    if sel.methods:
        if method is None:
            unchecked.append("method")
        elif method not in sel.methods:
            differ.append(f"method {method} ≠ {' or '.join(sel.methods)}")
    for key, expected in sel.config.items():
        ok = _satisfies(_known(g.get(key)), expected)
        if ok is None:
            unchecked.append(key)
        elif not ok:
            differ.append(f"{key} {g[key]} ≠ {_show(expected)}")
    return differ, unchecked


@dataclass
class _Place:
    benchmark: str  # a paper benchmark key
    reasons: list[str]
    proxy: bool = False


def _norm(tag: str) -> str:
    return tag.strip().lower().replace("_", "-")


def _proxy_places(paper: PaperResults, p: Proxy, ours: str) -> list[_Place]:
    return [_Place(k, [f"benchmark {ours} ≠ {paper.benchmarks[k].name}: a proxy ({p.why})"], True)
            for k in p.stands_for]


def _places(g: dict[str, str], paper: PaperResults) -> tuple[list[_Place], str, list[str]]:
    """Rule 2: (paper benchmarks the group's data is placed against, why none, keys not logged)."""
    ds, tag = _known(g.get("data.dataset")), _known(g.get("benchmark"))
    label, n = _known(g.get("data.label")), _known(g.get("scenario.num_sessions"))
    unchecked: list[str] = []
    if ds is None and tag is not None:  # no params: the tag names a benchmark, a proxy or dataset[-label]
        t = _norm(tag)
        if t in paper.benchmarks:
            b = paper.benchmarks[t]
            if n is None:
                return [_Place(t, [])], "", ["data.dataset", "scenario.num_sessions"]
            # a logged session count is checked even when the data set is known only by its tag
            differs = [] if _satisfies(n, b.num_sessions) else [f"scenario.num_sessions {n} ≠ {b.num_sessions}"]
            return [_Place(t, differs)], "", ["data.dataset"]
        if t in paper.proxies:
            return _proxy_places(paper, paper.proxies[t], tag), "", []
        for b in paper.benchmarks.values():
            if t in {_norm(b.dataset), _norm(f"{b.dataset}-{b.label}")}:
                ds, label = b.dataset, b.label
                break
        else:
            for p in paper.proxies.values():
                if t == _norm(f"{p.dataset}-{p.label}"):
                    return _proxy_places(paper, p, tag), "", []
            return [], f"benchmark {tag} has no counterpart in the paper", []
    if ds is None:
        return [], "runs carry neither a benchmark tag nor data.dataset", []
    ours = tag or (f"{ds}-{label}" if label and label not in _UNSET_TEXT else ds)
    cands = [b for b in paper.benchmarks.values() if b.dataset == ds]
    if not cands:
        for p in paper.proxies.values():
            if p.dataset == ds and (p.label is None or _satisfies(label, p.label)):
                return _proxy_places(paper, p, ours), "", []
        return [], f"data set {ours} has no counterpart in the paper (its benchmarks: " \
                   f"{', '.join(b.name for b in paper.benchmarks.values())})", []
    common: list[str] = []
    if label is None:
        unchecked.append("data.label")
    else:
        same = [b for b in cands if _satisfies(label, b.label)]
        if same:
            cands = same
        else:
            common.append(f"data.label {label} ≠ {' or '.join(sorted({_show(b.label) for b in cands}))}")
    by_tag = [b for b in cands if tag is not None and _norm(tag) == b.key]
    if n is None:
        cands = by_tag or cands
        if len(cands) > 1:  # TIMIT-2 or TIMIT-3: only the session count tells, so neither is the setting
            return [_Place(b.key, common + [f"scenario.num_sessions not logged ({b.name} has {b.num_sessions})"])
                    for b in cands], "", unchecked
        unchecked.append("scenario.num_sessions")
        return [_Place(b.key, list(common)) for b in cands], "", unchecked
    exact = [b for b in cands if _satisfies(n, b.num_sessions)]
    if exact:
        return [_Place(b.key, list(common)) for b in exact], "", unchecked
    return [_Place(b.key, common + [f"scenario.num_sessions {n} ≠ {b.num_sessions}"]) for b in (by_tag or cands)], \
        "", unchecked


def _setting_reasons(g: dict[str, str], s: Setting, paper_data: bool) -> tuple[list[str], list[str]]:
    """Rule 3: (differences from the table's setting, keys not logged)."""
    reasons, unchecked = [], []
    bb = _known(g.get("backbone.name")) or _known(g.get("backbone"))
    if bb is None:
        reasons.append(f"backbone not logged (paper: {s.backbone})")
    elif bb != s.backbone:
        reasons.append(f"backbone {bb} ≠ {s.backbone}")
    elif s.pretrained:
        ck = _known(g.get("backbone.checkpoint"))
        if ck is None:
            unchecked.append("backbone.checkpoint")
        elif ck in _UNSET_TEXT:
            reasons.append(f"backbone.checkpoint unset (random init) ≠ pretrained {s.backbone}")
    if paper_data:  # a proxy already differs; its data params say nothing more
        for key, expected in s.params.items():
            ok = _satisfies(_known(g.get(key)), expected)
            if ok is None:
                unchecked.append(key)
            elif not ok:
                reasons.append(f"{key} {g[key]} ≠ {_show(expected)}")
    return reasons, unchecked


# =============================================================================================
# The table


@dataclass
class _Group:
    values: dict[str, str]
    cell: Cell
    label: str = ""


@dataclass
class _Line:
    group: _Group
    cell: PaperCell
    reasons: list[str]


def _default_by(rows: pd.DataFrame) -> str | None:
    if "variant" in rows.columns and any(v not in UNSET_VARIANTS for v in rows["variant"].map(as_text)):
        return "variant"
    for key in ("method", "method.name", "variant"):
        if key in rows.columns:
            return key
    return None


def _groups(rows: pd.DataFrame, by: str | None, keys: list[str]) -> tuple[list[_Group], list[str]]:
    present = [k for k in ([by] if by else []) + keys if k in rows.columns]
    present = list(dict.fromkeys(present))
    text = rows[present].apply(lambda col: col.map(as_text)) if present else pd.DataFrame(index=rows.index)
    seeds = rows["seed"].map(as_text) if "seed" in rows.columns else pd.Series(MISSING, index=rows.index)
    frame = text.assign(seed=seeds, value=pd.to_numeric(rows["value"], errors="coerce"))
    frame = frame[frame["value"].notna()]
    out = []
    for key, g in (frame.groupby(present, sort=False) if present else [((), frame)]):
        key = key if isinstance(key, tuple) else (key,)
        out.append(_Group(dict(zip(present, key)), summarize(g["value"].tolist(), g["seed"].tolist())))
    notes = duplicate_seed_notes(frame, present, None) if present else []
    _label(out, by)
    return out, notes


def _label(groups: list[_Group], by: str | None) -> None:
    """``by / benchmark / backbone``; groups that would share a label get the keys that tell them apart."""
    def base(g: _Group) -> str:
        bench = _known(g.values.get("benchmark")) or _known(g.values.get("data.dataset")) or MISSING
        bb = _known(g.values.get("backbone")) or _known(g.values.get("backbone.name")) or MISSING
        return " / ".join([g.values.get(by, MISSING) if by else "all", bench, bb])

    labels = [base(g) for g in groups]
    for lab in set(labels):
        same = [g for g, x in zip(groups, labels) if x == lab]
        if len(same) < 2:
            continue
        differ = [k for k in same[0].values if len({g.values.get(k) for g in same}) > 1]
        for g in same:
            g.label = lab + " [" + ", ".join(f"{k}={g.values[k]}" for k in differ) + "]"
    for g, lab in zip(groups, labels):
        g.label = g.label or lab


def _signed(x: float, d: int) -> str:
    r = round(x, d)
    return f"{(0.0 if r == 0 else r):+.{d}f}"  # never "-0.00"


def _ours(c: Cell, d: int) -> str:
    if c.n == 1 or not math.isfinite(c.std):
        return f"{c.mean:.{d}f} ({c.n})"
    return f"{c.mean:.{d}f} ± {c.std:.{d}f} ({c.n})"


def paper_keys(paper: PaperResults | None = None) -> list[str]:
    """The tags and dotted params ``paper_table`` reads (pass those a study has to ``tidy``)."""
    return (paper or load_paper()).keys()


def paper_rows(runs: pd.DataFrame, metric: str = "last_accuracy", by: str | None = None,
               paper: PaperResults | None = None) -> tuple[pd.DataFrame, list[str]]:
    """``tidy`` over the matcher's keys that the runs have (a key no run has would be an error there)."""
    paper = paper or load_paper()
    keys = [k for k in dict.fromkeys(([by] if by else []) + paper.keys()) if key_column(runs, k) is not None]
    return tidy(runs, keys, metric)


def paper_table(rows: pd.DataFrame, metric: str = "last_accuracy", by: str | None = None,
                paper: PaperResults | None = None, tables: Sequence[str] | None = None,
                title: str = "") -> tuple[Table, list[str]]:
    """Our tidy runs beside the paper's cells of ``metric`` (module docstring: the matching rules).

    ``rows``: one row per run with ``value``, ``seed`` and text columns for the keys (``paper_rows``).
    ``by``: the key our rows are labelled and grouped by (default: variant, else method). ``tables``:
    the YAML's table keys to use (default all). Returns the table and notes on what was left out.
    """
    paper = paper or load_paper()
    if "value" not in rows.columns:
        raise ValueError(f"rows need a 'value' column (the metric per run); columns: {', '.join(rows.columns)}")
    by = by or _default_by(rows)
    if by is not None and by not in rows.columns:
        raise ValueError(f"no column {by!r} to group by; columns: {', '.join(map(str, rows.columns))}")
    keys = list(tables) if tables else list(paper.tables)
    unknown = [k for k in keys if k not in paper.tables]
    if unknown:
        raise ValueError(f"unknown paper table(s) {', '.join(unknown)}; known: {', '.join(paper.tables)}")
    order = {k: i for i, k in enumerate(keys)}
    usable = [c for c in paper.cells if c.table in order and c.match.compare and c.match.metric == metric]
    notes: list[str] = []
    if not usable:
        have = sorted({c.match.metric for c in paper.cells if c.table in order and c.match.compare})
        notes.append(f"the paper's tables ({', '.join(keys)}) have no {metric!r} cells; they report: {', '.join(have)}")

    groups, n = _groups(rows, by, paper.keys())
    notes += n
    lines: list[_Line] = []
    unchecked: set[str] = set()
    unnamed, elsewhere = [], []
    for g in groups:
        places, why_none, miss = _places(g.values, paper)
        unchecked.update(miss)
        at = {p.benchmark: p for p in places}
        named = [c for c in usable if _names(g.values, c.match)]
        here = [c for c in named if c.match.benchmark in at]
        cands = []
        for c in here:
            differ, miss = _conditions(g.values, c.match)
            unchecked.update(miss)
            cands.append((c, differ, miss))
        # rows whose conditions all hold, then those with some not logged, then the contradicted ones
        use = ([x[:2] for x in cands if not x[1] and not x[2]] or [x[:2] for x in cands if not x[1]]
               or [x[:2] for x in cands])
        for c, differ in use:
            place = at[c.match.benchmark]
            setting, miss = _setting_reasons(g.values, paper.tables[c.table].setting, not place.proxy)
            unchecked.update(miss)
            lines.append(_Line(g, c, setting + place.reasons + differ))
        if use:
            continue
        if not named:
            unnamed.append(g.label)
        elif not places:  # a row of the paper, on data the paper has no counterpart for
            setting, _ = _setting_reasons(g.values, paper.setting, False)
            lines.append(_Line(g, None, setting + [why_none]))  # type: ignore[arg-type]
        else:
            benches = sorted({c.match.benchmark for c in named}, key=list(paper.benchmarks).index)
            elsewhere.append(f"{g.label} (the paper has its row(s) on {', '.join(benches)} only)")
    if unnamed:
        notes.append(f"no paper row names {', '.join(unnamed)} (the rows' variant names are in "
                     f"{paper.path.name}; runs without a variant tag match by method)")
    if elsewhere:
        notes.append("not on a benchmark of their paper rows: " + "; ".join(elsewhere))
    if unchecked:
        notes.append("not logged by the runs, so not checked: " + ", ".join(sorted(unchecked)))

    def sort_key(ln: _Line):
        if ln.cell is None:
            return (len(order), 0, 0, natural_key(ln.group.label))
        t = paper.tables[ln.cell.table]
        return (order[ln.cell.table], t.rows.index(ln.cell.row), t.columns.index(ln.cell.column),
                natural_key(ln.group.label))

    lines.sort(key=sort_key)
    return _render(lines, paper, metric, title), list(dict.fromkeys(notes))


def _render(lines: list[_Line], paper: PaperResults, metric: str, title: str) -> Table:
    text, records, flagged = [], [], {}
    for ln in lines:
        c, ours = ln.cell, ln.group.cell
        same = not ln.reasons
        if c is None:
            d = 2
            row = ["–", "–", "–", "–", "–"]
        else:
            t = paper.tables[c.table]
            d = max(2, t.decimals)
            row = [t.short, c.row, c.column, c.text + (f" {FLAG}" if c.flagged else ""), ", ".join(c.source)]
            if c.flagged:
                flagged.setdefault((t.short, c.note), []).append(f"{c.row} / {c.column}")
        diff = ours.mean - c.value if (c is not None and same) else math.nan
        if math.isfinite(diff):
            delta = _signed(diff, d) + (f" ± {ours.std:.{d}f}" if ours.n > 1 and math.isfinite(ours.std) else "")
        else:
            delta = "–"
        row += [_ours(ours, d), delta, SAME if same else "; ".join(ln.reasons)]
        text.append(row)
        records.append({"row": ln.group.label, "paper_table": c.table if c else "", "paper_row": c.row if c else "",
                        "paper_column": c.column if c else "", "paper_value": c.value if c else math.nan,
                        "source": " ".join(c.source) if c else "", "uncertain": bool(c and c.flagged),
                        "mean": ours.mean, "std": ours.std, "n": ours.n, "diff": diff, "comparable": same,
                        "setting": SAME if same else "; ".join(ln.reasons)})
    used = list(dict.fromkeys(ln.cell.table for ln in lines if ln.cell is not None))
    a = paper.paper.get("authors") or []
    who = f"{', '.join(x.split()[-1] for x in a)}, {paper.paper.get('venue', '')}".strip(", ")
    notes = [f"paper: {paper.paper.get('title', 'PACE')} ({who}); its numbers as recovered in "
             f"{paper.paper.get('transcribed_from', paper.path.name)}, source tags as there "
             f"({', '.join(paper.sources)}).",
             "ours − paper: our mean minus the paper's number, ± our sample std over seeds (the paper reports "
             "neither seeds nor a spread); computed only where backbone, benchmark (data set, label, sessions), "
             "setting params, method config and metric all match, else the setting column names what differs."]
    settings = {paper.tables[k].setting.describe() for k in used}
    if len(settings) == 1:
        notes.append(f"setting of {', '.join(paper.tables[k].short for k in used)}: {settings.pop()}.")
    else:
        notes += [f"{paper.tables[k].short} setting: {paper.tables[k].setting.describe()}." for k in used]
    notes += [f"{paper.tables[k].short}: {paper.tables[k].note}" for k in used if paper.tables[k].note]
    for (short, note), where in flagged.items():
        notes.append(f"{FLAG} {short} ({'; '.join(dict.fromkeys(where))}): {note}")
    return Table(title or f"{metric}: ours beside the paper (PACE, ICLR 2026)", "ours", list(COLUMNS),
                 [ln.group.label for ln in lines], text, [[False] * len(COLUMNS) for _ in lines], notes, records)


def against_paper(runs: pd.DataFrame, metric: str = "last_accuracy", by: str | None = None,
                  tables: Sequence[str] | None = None, path: str | Path | None = None,
                  title: str = "") -> tuple[Table, list[str]]:
    """A study's runs (``load_study(...).runs``) beside the paper: ``paper_rows`` then ``paper_table``."""
    paper = load_paper(path)
    rows, notes = paper_rows(runs, metric, by, paper)
    table, more = paper_table(rows, metric, by, paper, tables, title)
    return table, list(dict.fromkeys(notes + more))
