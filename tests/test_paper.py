"""The paper's published numbers (pace/report/paper_results.yaml) and our runs beside them."""

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pace.report.paper import (PAPER_FILE, PaperDataError, against_paper, load_paper, paper_keys, paper_rows,
                               paper_table)
from pace.report.tables import to_csv, to_latex, to_markdown

REPO = Path(__file__).resolve().parents[1]
DOC = REPO.parent / "shared" / "docs" / "pace_method.md"
SPREAD = (-0.5, 0.0, 0.5)  # three seeds whose mean is the paper's value


@pytest.fixture(scope="module")
def paper():
    return load_paper()


def _text(v):
    """A value as MLflow logs a param (str of the Python value)."""
    return str(v[0] if isinstance(v, list) else v)


def _run_rows(cell, backbone="eat-base"):
    """Three seeds of the group the cell stands for, in the cell's own setting."""
    m = cell.match
    variant = m.variants[0] if m.variants else ("pace" if m.variants is None else "default")
    base = {"variant": variant, "method": m.methods[0] if m.methods else variant, "benchmark": m.benchmark,
            "backbone": backbone, **{k: _text(v) for k, v in m.config.items()}}
    return [{**base, "seed": str(s), "value": cell.value + d} for s, d in enumerate(SPREAD)]


# =============================================================================================
# (a) a study equal to the paper


def _comparable(paper, table):
    return [c for c in paper.table_cells(table) if c.match.compare]


@pytest.mark.parametrize("table", ["table2", "table1", "table3", "table4", "table12", "fig6a", "fig6b", "fig7",
                                   "fig3"])
def test_study_equal_to_the_paper_differs_by_zero_everywhere(paper, table):
    cells = _comparable(paper, table)
    assert cells
    for metric in sorted({c.match.metric for c in cells}):  # one study per metric (tidy holds one value)
        want = {(c.row, c.column) for c in cells if c.match.metric == metric}
        rows = pd.DataFrame([r for c in cells if c.match.metric == metric for r in _run_rows(c)])
        t, notes = paper_table(rows, metric, paper=paper, tables=[table])
        got = [(r["paper_row"], r["paper_column"]) for r in t.records]
        assert sorted(got) == sorted(want), (metric, notes)  # every cell found, each once
        for rec, line in zip(t.records, t.cells):
            assert rec["comparable"] and rec["n"] == 3, rec
            assert abs(rec["diff"]) < 1e-9, rec
            assert re.fullmatch(r"\+0\.0+ ± \d+\.\d+", line[6]), line  # never "-0.00"
            assert line[7] == "as in the paper"


def test_table2_lines_read_as_expected(paper):
    cells = _comparable(paper, "table2")
    rows = pd.DataFrame([r for c in cells for r in _run_rows(c)])
    t, _ = paper_table(rows, paper=paper, tables=["table2"])
    assert len(t.rows) == 36 and t.columns[6] == "ours − paper"
    i = t.records.index(next(r for r in t.records if r["paper_row"] == "PACE" and r["paper_column"] == "ESC-50"))
    assert t.rows[i] == "pace / esc50 / eat-base"
    assert t.cells[i][:6] == ["Table 2", "PACE", "ESC-50", "95.75", "PN, DIG", "95.75 ± 0.50 (3)"]
    # the inferred RanPAC w/o FSA row is flagged, with the doc's reason in a footnote
    flagged = [r for r in t.records if r["uncertain"]]
    assert {r["paper_row"] for r in flagged} == {"RanPAC (w/o FSA) / ACL, frozen EAT"}
    assert any(n.startswith("‡ Table 2") and "inference" in n for n in t.footnotes)
    for render in (to_markdown, to_csv, to_latex):
        assert "95.75" in render(t)


# =============================================================================================
# (b) a proxy study: side by side, never a difference


def _proxy_rows():
    specs = [("pace", "pace", {}), ("full", "pace", {"method.fsa": "True", "method.msa": "True"}),
             ("wo_msa", "pace", {"method.fsa": "True", "method.msa": "False"}),
             ("ranpac_fsa", "ranpac", {"method.fsa.enabled": "True"}), ("l2p", "l2p", {})]
    benches = {"fsdd-fine": ("fsdd", "digit_speaker"), "drumkits": ("drumkits", "kit_instrument")}
    rows = []
    for variant, method, cfg in specs:
        for bench, (ds, label) in benches.items():
            for seed, v in enumerate((60.0, 62.0, 64.0)):
                rows.append({"variant": variant, "method": method, "benchmark": bench, "backbone": "whisper-tiny",
                             "backbone.name": "whisper-tiny", "data.dataset": ds, "data.label": label,
                             "scenario.num_sessions": "10", "seed": str(seed), "value": v, **cfg})
    return pd.DataFrame(rows)


def test_proxy_study_computes_no_difference_and_says_why(paper):
    t, notes = paper_table(_proxy_rows(), paper=paper)
    assert t.records
    assert {lab.split(" / ")[0] for lab in t.rows} == {"pace", "full", "wo_msa", "ranpac_fsa", "l2p"}
    for rec, line in zip(t.records, t.cells):
        assert not rec["comparable"] and math.isnan(rec["diff"]), rec
        assert line[6] == "–"
        assert "backbone whisper-tiny ≠ eat-base" in line[7], line
        if "fsdd-fine" in rec["row"]:
            assert "benchmark fsdd-fine ≠ TIMIT" in line[7] and "a proxy" in line[7]
            assert rec["paper_value"] > 0  # the paper's TIMIT number, side by side
        else:
            assert "drumkits" in rec["row"] and "no counterpart in the paper" in line[7]
            assert line[3] == "–"
    fine = {(r["row"].split(" / ")[0], r["paper_table"], r["paper_column"]) for r in t.records if "fsdd" in r["row"]}
    assert ("pace", "table2", "TIMIT-2") in fine and ("pace", "table2", "TIMIT-3") in fine
    assert ("wo_msa", "table4", "TIMIT-3") in fine and ("ranpac_fsa", "table2", "TIMIT-2") in fine


def _mlflow_runs(groups):
    """A frame shaped like mlflow.search_runs: tags.*, params.*, metrics.*."""
    rows = []
    for i, (tags, params, values) in enumerate(groups):
        for seed, v in enumerate(values):
            rows.append({"run_id": f"r{i}{seed}", **{f"tags.{k}": v2 for k, v2 in {**tags, "seed": str(seed)}.items()},
                         **{f"params.{k}": str(v2) for k, v2 in params.items()}, "metrics.last_accuracy": v})
    return pd.DataFrame(rows)


EAT = {"backbone.name": "eat-base", "backbone.checkpoint": "/mnt/shared/EAT-base_epoch30.pt",
       "backbone.target_frames": None, "scenario.test_fraction": 0.2, "scenario.first_session_classes": None,
       "scenario.max_classes": None, "scenario.official_split": False, "data.subset": None,
       "data.max_per_class": None, "method.name": "pace", "method.fsa": True, "method.msa": True,
       "method.boundary_loss": True, "method.projection": True, "method.layer_selection": "cka",
       "method.head_strategy": "learn_freeze", "method.msa_stop": "adaptive"}


def _tags(variant, bench, backbone="eat-base", method="pace"):
    return {"variant": variant, "method": method, "benchmark": bench, "backbone": backbone}


@pytest.mark.parametrize("tags, params, column, setting", [
    # sessions tell TIMIT-3 from TIMIT-2, whatever the benchmark tag says
    (_tags("pace", "timit"), {"data.dataset": "timit", "data.label": "speaker", "scenario.num_sessions": 210},
     "TIMIT-3", "as in the paper"),
    (_tags("pace", "esc50"), {"data.dataset": "esc50", "data.label": None, "scenario.num_sessions": 5},
     "ESC-50", "scenario.num_sessions 5 ≠ 10"),
    (_tags("pace", "esc50"), {"data.dataset": "esc50", "data.label": None, "scenario.num_sessions": 10,
                              "backbone.checkpoint": None},
     "ESC-50", "backbone.checkpoint unset (random init) ≠ pretrained eat-base"),
    (_tags("pace", "esc50", "whisper-tiny"), {"data.dataset": "esc50", "data.label": None,
                                              "scenario.num_sessions": 10, "backbone.name": "whisper-tiny"},
     "ESC-50", "backbone whisper-tiny ≠ eat-base"),
    (_tags("pace", "sc2"), {"data.dataset": "speechcommands", "data.label": None, "scenario.num_sessions": 7,
                            "method.msa": False},
     "SC2", "method.msa False ≠ true"),
])
def test_one_setting_difference_is_named(paper, tags, params, column, setting):
    runs = _mlflow_runs([(tags, {**EAT, **params}, [90.0, 91.0, 92.0])])
    t, notes = against_paper(runs, tables=["table2"])
    assert [(r["paper_row"], r["paper_column"]) for r in t.records] == [("PACE", column)], notes
    rec = t.records[0]
    assert rec["setting"] == setting
    assert rec["comparable"] == (setting == "as in the paper")
    if rec["comparable"]:
        assert rec["diff"] == pytest.approx(91.0 - 94.05)


def test_ranpac_rows_are_told_apart_by_the_fsa_param(paper):
    # the variant name "ranpac" means RanPAC with FSA in paper_table2.yaml, without in fsdd_methods.yaml
    base = {**EAT, "method.name": "ranpac", "data.dataset": "esc50", "data.label": None, "scenario.num_sessions": 10}
    runs = _mlflow_runs([(_tags("ranpac", "esc50", method="ranpac"), {**base, "method.fsa.enabled": True}, [92.25]),
                         (_tags("ranpac", "us8k", method="ranpac"),
                          {**base, "data.dataset": "us8k", "scenario.num_sessions": 5, "method.fsa.enabled": False},
                          [96.49])])
    t, _ = against_paper(runs, tables=["table2"])
    got = {(r["paper_row"], r["paper_column"]): r["diff"] for r in t.records}
    assert got == {("RanPAC (w/ FSA)", "ESC-50"): pytest.approx(0.0),
                   ("RanPAC (w/o FSA) / ACL, frozen EAT", "US8K"): pytest.approx(0.0)}


def test_timit_without_session_count_is_not_differenced(paper):
    # a plain run's benchmark tag is dataset-label: TIMIT-2 and TIMIT-3 differ only in sessions
    rows = pd.DataFrame([{"variant": "default", "method": "pace", "benchmark": "timit-speaker",
                          "backbone": "eat-base", "seed": str(s), "value": 92.0} for s in range(2)])
    t, _ = paper_table(rows, paper=paper, tables=["table2"])
    assert [r["paper_column"] for r in t.records] == ["TIMIT-2", "TIMIT-3"]
    assert [r["setting"] for r in t.records] == ["scenario.num_sessions not logged (TIMIT-2 has 315)",
                                                 "scenario.num_sessions not logged (TIMIT-3 has 210)"]


def test_paper_rows_asks_tidy_only_for_keys_the_runs_have(paper):
    runs = _mlflow_runs([(_tags("full", "timit2"), {**EAT, "data.dataset": "timit", "data.label": "speaker",
                                                     "scenario.num_sessions": 315}, [90.0, 91.0])])
    rows, _ = paper_rows(runs, paper=paper)
    assert "method.fsa.enabled" not in rows.columns and "data.dataset" in rows.columns
    assert set(rows.columns) <= set(paper_keys(paper)) | {"run_id", "seed", "value"}
    t, _ = paper_table(rows, paper=paper, tables=["table4"])
    assert [r["paper_row"] for r in t.records] == ["PACE (full)"] and t.records[0]["comparable"]


def test_metric_without_paper_cells_is_a_note(paper):
    rows = pd.DataFrame(_run_rows(paper.table_cells("table2")[0]))
    t, notes = paper_table(rows, "forgetting", paper=paper)
    assert not t.rows and any("no 'forgetting' cells" in n for n in notes)
    with pytest.raises(ValueError, match="unknown paper table"):
        paper_table(rows, paper=paper, tables=["table99"])


# =============================================================================================
# (c) the loader's errors name the file and the field


MINIMAL = """
setting: {backbone: eat-base, metric: last_accuracy}
sources: {PN: papernotes}
benchmarks:
  esc50: {name: ESC-50, dataset: esc50, label: null, num_sessions: 10}
tables:
  table2:
    title: "Table 2: main"
    rows: {PACE: {variants: [pace], method: pace}}
    columns: {ESC-50: {benchmark: esc50}}
cells:
  - {table: table2, row: PACE, column: ESC-50, value: 95.75, source: [PN]}
"""


def test_minimal_file_loads(tmp_path):
    path = tmp_path / "paper.yaml"
    path.write_text(MINIMAL)
    p = load_paper(path)
    assert [(c.row, c.column, c.value, c.source) for c in p.cells] == [("PACE", "ESC-50", 95.75, ("PN",))]


GOOD = "{table: table2, row: PACE, column: ESC-50, value: 95.75, source: [PN]}"


@pytest.mark.parametrize("cell, field", [
    ("{table: table2, row: PACE, column: ESC-50, source: [PN]}", "missing field 'value'"),
    ("{table: table2, row: PACE, column: ESC-50, value: 95.75}", "missing field 'source'"),
    ("{table: table2, row: PACE, column: ESC-50, value: 95.75, source: []}", "(table2 / PACE / ESC-50).source"),
    ("{table: table2, row: PACE, column: ESC-50, value: high, source: [PN]}", "(table2 / PACE / ESC-50).value"),
    ("{table: table2, row: Pace, column: ESC-50, value: 95.75, source: [PN]}", "(table2 / Pace / ESC-50).row"),
    ("{table: table2, row: PACE, column: ESC-50, value: 95.75, source: [XX]}", "unknown source tag"),
    ("{table: table2, row: PACE, column: ESC-50, value: 95.75, source: [PN], uncertain: true}", ".note"),
])
def test_loader_rejects_a_bad_cell_naming_file_and_field(tmp_path, cell, field):
    path = tmp_path / "paper.yaml"
    path.write_text(MINIMAL.replace(GOOD, cell))
    with pytest.raises(PaperDataError) as err:
        load_paper(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: cells[0]") and field in msg, msg


def test_loader_rejects_a_cell_without_a_benchmark(tmp_path):
    path = tmp_path / "paper.yaml"
    path.write_text(MINIMAL.replace("{benchmark: esc50}", "{}"))
    with pytest.raises(PaperDataError, match="no benchmark for this cell"):
        load_paper(path)


# =============================================================================================
# (d) the YAML against the doc it was transcribed from, and against itself


def _doc_tables():
    """{paper table number: {(row, column): (value, relative % or None)}} from pace_method.md section 4."""
    if not DOC.is_file():
        pytest.skip(f"{DOC} not found (the shared docs sit beside the repository)")
    out, current, header = {}, None, None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#{2,4} .*\(Table (\d+)\b", line)
        if line.startswith("#"):
            current, header = (f"table{m.group(1)}" if m else None), None
            continue
        if current is None or not line.startswith("|") or current in out and header is None:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        row = cells[0].replace("**", "").strip()
        for col, raw in zip(header[1:], cells[1:]):
            if col in ("Source", ""):
                continue
            num = re.match(r"\s*(-?\d+(?:\.\d+)?)\s*(?:\(([+−-]\d+(?:\.\d+)?)%\))?", raw.replace("**", ""))
            assert num, (current, row, col, raw)
            rel = float(num.group(2).replace("−", "-")) if num.group(2) else None
            out.setdefault(current, {})[(row, col)] = (float(num.group(1)), rel)
    return out


@pytest.mark.parametrize("table", ["table2", "table1", "table3", "table4", "table12"])
def test_yaml_equals_the_doc(paper, table):
    doc = _doc_tables()[table]
    ours = {(c.row, c.column): (c.value, c.relative_pct) for c in paper.table_cells(table)}
    assert ours == doc


def test_cells_per_table(paper):
    counts = {t: len(paper.table_cells(t)) for t in paper.tables}
    assert counts == {"table2": 36, "table1": 8, "table3": 15, "table4": 15, "table12": 36, "fig6a": 25,
                      "fig6b": 20, "fig7": 27, "fig3": 28, "fig1": 6, "fig9": 35, "compute": 5}


def test_printed_relative_changes_agree_with_the_values(paper):
    for table, base_row in (("table3", "w/o FSA"), ("table4", "PACE (full)")):
        base = {c.column: c.value for c in paper.table_cells(table) if c.row == base_row}
        for c in paper.table_cells(table):
            if c.relative_pct is not None:  # the paper rounds from unrounded numbers: 0.03 points slack
                assert 100 * (c.value - base[c.column]) / base[c.column] == pytest.approx(c.relative_pct, abs=0.03), c


def test_table12_average_is_the_row_mean_unless_flagged(paper):
    cells = paper.table_cells("table12")
    for row in {c.row for c in cells}:
        vals = [c.value for c in cells if c.row == row and c.column != "Avg"]
        avg = next(c for c in cells if c.row == row and c.column == "Avg")
        assert len(vals) == 5
        if not avg.uncertain:
            assert sum(vals) / 5 == pytest.approx(avg.value, abs=0.006), row
        else:  # 0.90: recovered as 85.01, the row's mean is 85.81
            assert "85.81" in avg.note and abs(sum(vals) / 5 - avg.value) > 0.5


def test_fig6a_selected_layer_is_the_first_below_rho(paper):
    cells = paper.table_cells("fig6a")
    for row in {c.row for c in cells}:
        cka = [next(c.value for c in cells if c.row == row and c.column == f"layer {k}") for k in range(4)]
        selected = next(c.value for c in cells if c.row == row and c.column == "selected")
        assert selected == next(k for k, s in enumerate(cka) if s < 0.94), row


def test_benchmarks_and_proxies_match_the_presets(paper):
    from pace.data.presets import PRESETS

    for key, b in paper.benchmarks.items():
        p = PRESETS[key]
        assert (p.data["dataset"], p.data.get("label"), p.scenario["num_sessions"], p.classes) == \
            (b.dataset, b.label, b.num_sessions, b.classes), key
    for key, p in paper.proxies.items():
        if key in PRESETS:
            assert (PRESETS[key].data["dataset"], PRESETS[key].data.get("label")) == (p.dataset, p.label), key


# each shipped spec's variants that name a row of the table it reproduces; the rest are listed
SPEC_TABLES = [
    ("sweeps/paper_table2.yaml", ["table2"], {"simplecil", "lorasub", "peft_ft", "dualprompt", "sprompt",
                                              "codaprompt"}),  # rows not recovered
    ("ablations/table3_fsa.yaml", ["table3"], set()),
    ("ablations/table4_components.yaml", ["table4", "table1"], set()),
    ("ablations/table12_rho_layer.yaml", ["table12", "fig6b"], set()),
    ("ablations/fig7_msa_sessions.yaml", ["fig7"], {"t3_30"}),  # Fig. 7 has no point at 30
]


@pytest.mark.parametrize("spec, tables, unrecovered", SPEC_TABLES)
def test_spec_variants_name_paper_rows(paper, spec, tables, unrecovered):
    variants = set(yaml.safe_load((REPO / spec).read_text())["variants"])
    named = {v for t in tables for c in paper.table_cells(t) for v in (c.match.variants or ())}
    assert variants - unrecovered <= named, sorted(variants - unrecovered - named)
    assert not unrecovered & named


def test_shipped_file_is_next_to_the_module():
    assert PAPER_FILE.name == "paper_results.yaml" and PAPER_FILE.parent.name == "report"
