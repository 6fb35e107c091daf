"""``pace report``: ``run_report`` / ``run_compare`` (read, tabulate, render) and their command line."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from pace.report.cells import (CONFIG_KEY, Grouping, aggregate, choose_grouping, configurations,
                               duplicate_seed_notes, tidy, varied_params)
from pace.report.paired import UNIT, paired_differences, paired_table, ranking, ranking_table
from pace.report.paper import against_paper
from pace.report.read import Study, load_study, resolve_uri
from pace.report.render import PARENT_ARTIFACT_DIR, log_to_parent, make_figures, paired_figure, slug, write_tables
from pace.report.tables import FORMATS, RENDER, Table, build_table, compare_table, to_markdown
from pace.tracking import INSTANCE_TAG


@dataclass
class ReportResult:
    files: list[Path]
    tables: dict[str, Table]
    notes: list[str]
    logged_to: str | None = None
    instance: str | None = None


def _cells(study: Study, g: Grouping, metric: str) -> tuple[dict, list[str]]:
    keys = g.rows + ([g.column] if g.column else [])
    rows, notes = tidy(study.runs, keys, metric)
    return aggregate(rows, g.rows, g.column), notes + duplicate_seed_notes(rows, g.rows, g.column)


def run_report(uri: str, experiment: str, out: Path, metrics: Sequence[str] = ("last_accuracy",),
               group_by: Sequence[str] | None = None, column: str = "benchmark",
               formats: Sequence[str] = FORMATS, baseline: str | None = None, sweep_param: str | None = None,
               figures: bool = True, log: bool = True, max_heatmaps: int = 20,
               all_instances: bool = False, where: dict[str, list[str]] | None = None) -> ReportResult:
    study = load_study(uri, experiment, all_instances, where)
    if study.runs.empty:
        raise ValueError(f"experiment {experiment!r} has no FINISHED runs to report"
                         + (f" ({'; '.join(study.notes)})" if study.notes else ""))
    g = choose_grouping(study.runs, group_by, column, sweep_param)
    notes, files, tables = list(study.notes), [], {}
    corner = " / ".join(g.rows) or "runs"
    if not group_by and not sweep_param:
        g, corner, n = _split_configurations(study, g, corner)
        notes += n
    out.mkdir(parents=True, exist_ok=True)
    where = [f"runs of study instance {study.instance} (tag {INSTANCE_TAG})"] if study.instance else []
    for metric in metrics:
        cells, n = _cells(study, g, metric)
        notes += n
        t = build_table(cells, metric, corner, baseline=baseline, avg=bool(sweep_param),
                        title=f"{experiment}: {metric}")
        t.footnotes += where
        tables[metric] = t
        files += write_tables(t, out, f"table_{slug(metric)}", formats)
    if figures:
        fig_files, n = make_figures(study, g, out, metrics[0], sweep_param, max_heatmaps)
        files += fig_files
        notes += n
    logged = log_to_parent(study, files, out) if log else None
    return ReportResult(files, tables, list(dict.fromkeys(notes)), logged, study.instance)


def run_paired(uri: str, experiment: str, out: Path, reference: str, metrics: Sequence[str] = ("last_accuracy",),
               by: str = "variant", unit: Sequence[str] = UNIT, formats: Sequence[str] = FORMATS,
               all_instances: bool = False, figures: bool = True,
               where: dict[str, list[str]] | None = None) -> ReportResult:
    """Every ``by`` value against ``reference``, paired per ``unit`` (benchmark, seed), with bootstrap
    intervals, and the ranking in tiers the data separate (pace.report.paired); with ``figures``, a
    forest plot of the differences per metric (``paired_<metric>.png``)."""
    study = load_study(uri, experiment, all_instances, where)
    if study.runs.empty:
        raise ValueError(f"experiment {experiment!r} has no FINISHED runs to compare")
    out.mkdir(parents=True, exist_ok=True)
    notes, files, tables = list(study.notes), [], {}
    for metric in metrics:
        rows, n = tidy(study.runs, [by, *[u for u in unit if u != "seed"]], metric)
        notes += n
        diffs = paired_differences(rows, by, reference, tuple(unit))
        t, sentences = paired_table(rows, by, reference, metric, tuple(unit), diffs=diffs)
        r = ranking_table(ranking(rows, by, tuple(unit)), metric, by)
        t.footnotes += sentences
        tables[f"{metric} paired"], tables[f"{metric} ranking"] = t, r
        files += write_tables(t, out, f"paired_{slug(metric)}", formats)
        files += write_tables(r, out, f"ranking_{slug(metric)}", formats)
        if figures:
            files.append(paired_figure(list(diffs.values()), reference, metric, out / f"paired_{slug(metric)}.png"))
    return ReportResult(files, tables, list(dict.fromkeys(notes)), None, study.instance)


def run_against_paper(uri: str, experiment: str, out: Path, metrics: Sequence[str] = ("last_accuracy",),
                      by: str | None = None, paper_tables: Sequence[str] | None = None,
                      formats: Sequence[str] = FORMATS, all_instances: bool = False,
                      where: dict[str, list[str]] | None = None) -> ReportResult:
    """Our runs beside the paper's published cells (pace.report.paper)."""
    study = load_study(uri, experiment, all_instances, where)
    if study.runs.empty:
        raise ValueError(f"experiment {experiment!r} has no FINISHED runs to compare")
    out.mkdir(parents=True, exist_ok=True)
    notes, files, tables = list(study.notes), [], {}
    for metric in metrics:
        t, n = against_paper(study.runs, metric, by, paper_tables, title=f"{experiment} vs the paper: {metric}")
        notes += n
        tables[metric] = t
        files += write_tables(t, out, f"paper_{slug(metric)}", formats)
    return ReportResult(files, tables, list(dict.fromkeys(notes)), None, study.instance)


def _split_configurations(study: Study, g: Grouping, corner: str) -> tuple[Grouping, str, list[str]]:
    """A sweep's runs of one method differ in searched parameters: make each configuration a row
    (a derived ``configuration`` column on the runs) rather than pooling them as if they were seeds."""
    labels = configurations(study.runs, g.rows, g.column)
    if labels is None:
        return g, corner, []
    study.runs = study.runs.assign(**{CONFIG_KEY: labels})
    names = sorted({n for v in varied_params(study.runs, g.rows + ([g.column] if g.column else [])).values()
                    for n in v})
    note = (f"runs of one {corner} differ in searched parameters ({', '.join(names)}): one row per "
            f"configuration, never pooled (--group-by {','.join(g.rows) or 'KEY'} pools them)")
    return Grouping([CONFIG_KEY], g.column), f"{corner} [configuration]", [note]


def run_compare(uri: str, exp_a: str, exp_b: str, out: Path, metrics: Sequence[str] = ("last_accuracy",),
                group_by: Sequence[str] | None = None, column: str = "benchmark",
                formats: Sequence[str] = FORMATS, all_instances: bool = False) -> ReportResult:
    a, b = load_study(uri, exp_a, all_instances), load_study(uri, exp_b, all_instances)
    for s in (a, b):
        if s.runs.empty:
            raise ValueError(f"experiment {s.name!r} has no FINISHED runs to compare")
    # one grouping for both sides, so rows line up
    g = choose_grouping(pd.concat([a.runs, b.runs], ignore_index=True), group_by, column)
    out.mkdir(parents=True, exist_ok=True)
    notes = [f"[{s.name}] study instance {s.instance} (tag {INSTANCE_TAG})" for s in (a, b) if s.instance]
    notes += [f"[{exp_a}] {n}" for n in a.notes] + [f"[{exp_b}] {n}" for n in b.notes]
    files, tables = [], {}
    for metric in metrics:
        (ca, na), (cb, nb) = _cells(a, g, metric), _cells(b, g, metric)
        notes += [f"[{exp_a}] {n}" for n in na] + [f"[{exp_b}] {n}" for n in nb]
        t = compare_table(ca, cb, exp_a, exp_b, metric, " / ".join(g.rows) or "runs")
        tables[metric] = t
        files += write_tables(t, out, f"compare_{slug(metric)}", formats)
    return ReportResult(files, tables, list(dict.fromkeys(notes)))


# =============================================================================================
# CLI


def _list(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def _where(items: list[str] | None) -> dict[str, list[str]] | None:
    """``--where key=v1,v2`` (repeatable) -> {key: [v1, v2]}."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not _list(values):
            raise ValueError(f"--where {item!r}: expected KEY=VALUE[,VALUE...] (e.g. benchmark=drumkits,fsdd-fine)")
        out.setdefault(key.strip(), []).extend(_list(values))
    return out or None


def cmd_report(args) -> int:
    uri = resolve_uri(args.tracking_uri)
    formats = _list(args.format) or list(FORMATS)
    bad = [f for f in formats if f not in RENDER]
    if bad:
        raise ValueError(f"--format: unknown {', '.join(bad)} (choose from {', '.join(FORMATS)})")
    metrics = _list(args.metric) or ["last_accuracy"]
    where = _where(args.where)
    if where and args.compare:
        raise ValueError("--where applies to --experiment (pool the two with --experiment A,B instead)")
    if (args.paired or args.against) and (args.compare or args.baseline or args.sweep_param):
        raise ValueError("--paired and --against apply to --experiment alone (not with --compare, --baseline "
                         "or --sweep-param)")
    if args.paired and args.against:
        raise ValueError("--paired and --against are separate reports: give one of them")
    if args.paired:
        out = Path(args.out or Path("reports") / f"{slug(args.experiment)}_paired")
        by = (_list(args.group_by) or ["variant"])[0]
        res = run_paired(uri, args.experiment, out, args.paired, metrics, by, _list(args.pair_over) or UNIT,
                         formats, args.all_instances, not args.no_figures, where)
    elif args.against:
        out = Path(args.out or Path("reports") / f"{slug(args.experiment)}_paper")
        by = (_list(args.group_by) or [None])[0]
        res = run_against_paper(uri, args.experiment, out, metrics, by, _list(args.paper_tables), formats,
                                args.all_instances, where)
    elif args.compare:
        if args.baseline or args.sweep_param:
            raise ValueError("--baseline and --sweep-param apply to --experiment, not to --compare")
        a, b = args.compare
        out = Path(args.out or Path("reports") / f"{slug(a)}_vs_{slug(b)}")
        res = run_compare(uri, a, b, out, metrics, _list(args.group_by), args.columns, formats,
                          args.all_instances)
    else:
        out = Path(args.out or Path("reports") / slug(args.experiment))
        res = run_report(uri, args.experiment, out, metrics, _list(args.group_by), args.columns, formats,
                         args.baseline, args.sweep_param, not args.no_figures, not args.no_log,
                         args.max_heatmaps, args.all_instances, where)
        if res.instance:
            print(f"study instance {res.instance} of {args.experiment} (the newest; --all-instances for every one)\n")
    for t in res.tables.values():
        print(to_markdown(t))
    for n in res.notes:
        print(f"note: {n}", file=sys.stderr)
    print(f"wrote {len(res.files)} file(s) to {out}"
          + (f"; logged to parent run {res.logged_to} under {PARENT_ARTIFACT_DIR}/" if res.logged_to else ""))
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("report", help="tables and figures from a study's MLflow runs (mean ± std over seeds)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", metavar="NAME", help="MLflow experiment (one per sweep/ablation study); "
                       "A,B pools several studies' runs")
    which.add_argument("--compare", nargs=2, metavar=("EXP_A", "EXP_B"),
                       help="two experiments side by side with the differences B - A")
    p.add_argument("--group-by", metavar="KEYS",
                   help="comma-separated tags or dotted params, e.g. variant,benchmark,backbone; the "
                        "--columns key becomes the columns, the rest the rows (default: variant or method)")
    p.add_argument("--columns", default="benchmark", metavar="KEY", help="key spread over columns (default benchmark)")
    p.add_argument("--metric", default="last_accuracy", metavar="NAMES",
                   help="final metric(s), comma-separated; one table each (default last_accuracy)")
    p.add_argument("--format", default=",".join(FORMATS), metavar="FORMATS", help="md,csv,latex (default all)")
    p.add_argument("--out", metavar="DIR", help="output folder (default reports/<experiment>)")
    p.add_argument("--baseline", metavar="ROW", help="row label (e.g. a variant) to show deltas against")
    p.add_argument("--sweep-param", metavar="KEY",
                   help="swept config key (e.g. method.rho_layer): rows by its value, an avg column, and a "
                        "sensitivity figure (metric vs value, one line per benchmark)")
    p.add_argument("--paired", metavar="REFERENCE",
                   help="every variant (or the --group-by key) minus REFERENCE, paired per benchmark and seed, "
                        "with 95%% bootstrap intervals and a ranking in tiers the data separate")
    p.add_argument("--pair-over", metavar="KEYS", help="the units of --paired (default benchmark,seed)")
    p.add_argument("--against", choices=["paper"],
                   help="our runs beside the PACE paper's published cells; the difference only where backbone, "
                        "benchmark and metric match, otherwise which setting differs")
    p.add_argument("--paper-tables", metavar="NAMES", help="with --against paper: e.g. table2,table4 (default all)")
    p.add_argument("--where", action="append", metavar="KEY=VALUES",
                   help="keep runs whose tag or param KEY is one of the comma-separated VALUES (repeatable)")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow store (default sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--all-instances", action="store_true",
                   help="pool every start of the study (default: only the newest, tag pace.study_instance)")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the study's parent run")
    p.add_argument("--max-heatmaps", type=int, default=20, metavar="N",
                   help="per-trial accuracy-matrix heat maps to draw (default 20; seed means are always drawn)")
    p.set_defaults(func=cmd_report)
