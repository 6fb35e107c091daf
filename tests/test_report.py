"""pace report over an MLflow store written here through MlflowClient (the layout pace.tracking writes)."""

import math

import pytest

pytest.importorskip("mlflow")
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pace.cli import main  # noqa: E402
from pace.report.cells import aggregate, summarize, tidy  # noqa: E402
from pace.report.cli import run_compare, run_report  # noqa: E402
from pace.report.read import load_study, read_matrix_csv  # noqa: E402
from pace.report.tables import FLAG, build_table, to_csv, to_latex, to_markdown  # noqa: E402

# (variant, benchmark, seed) -> last_accuracy. Means and sample stds by hand:
#   full/esc50   94 95 96 -> 95, sqrt((1+0+1)/2) = 1
#   full/sc2     91 92 96 -> 93, sqrt((4+1+9)/2) = sqrt(7) = 2.6458
#   wo_fsa/esc50 90 92 94 -> 92, sqrt((4+0+4)/2) = 2
#   wo_fsa/sc2   80 84    -> 82, sqrt((4+4)/1) = sqrt(8) = 2.8284   (seed 2 missing: flagged)
STUDY_A = {("full", "esc50", 0): 94.0, ("full", "esc50", 1): 95.0, ("full", "esc50", 2): 96.0,
           ("full", "sc2", 0): 91.0, ("full", "sc2", 1): 92.0, ("full", "sc2", 2): 96.0,
           ("wo_fsa", "esc50", 0): 90.0, ("wo_fsa", "esc50", 1): 92.0, ("wo_fsa", "esc50", 2): 94.0,
           ("wo_fsa", "sc2", 0): 80.0, ("wo_fsa", "sc2", 1): 84.0}
#   full/esc50 95.5 96 96.5 -> 96 (B - A = +1); wo_fsa/esc50 91 95 97 -> 94.33 (B - A = +2.33)
STUDY_B = {("full", "esc50", 0): 95.5, ("full", "esc50", 1): 96.0, ("full", "esc50", 2): 96.5,
           ("wo_fsa", "esc50", 0): 91.0, ("wo_fsa", "esc50", 1): 95.0, ("wo_fsa", "esc50", 2): 97.0}


def _matrix(last):
    """A 3-session lower-triangular matrix whose last row's mean is ``last``."""
    return [[100.0], [95.0, 90.0], [last - 5.0, last, last + 5.0]]


def _log_child(client, exp, parent, variant, bench, seed, last, status="FINISHED", tmp=None, params=None,
               tags=None):
    tags = {"mlflow.parentRunId": parent, "method": "pace", "backbone": "eat-base", "benchmark": bench,
            "seed": str(seed), "variant": variant, "git_commit": "abc", **(tags or {})}
    run = client.create_run(exp, tags=tags)
    rid = run.info.run_id
    m = _matrix(last)
    ps = [Param(k, str(v)) for k, v in {"method.name": "pace", "scenario.num_sessions": 3,
                                        **(params or {})}.items()]
    hist = [Metric("acc_all", v, 1000 + t, t) for t, v in enumerate([100.0, 92.5, last])]
    hist += [Metric("forgetting", v, 1000 + t, t) for t, v in enumerate([0.0, 5.0, 7.5])]
    final = {"last_accuracy": last, "average_incremental_accuracy": (100 + 92.5 + last) / 3, "bwt": -7.5,
             "plasticity": (100 + 90 + last + 5) / 3, "stability": 90.0, "first_task_accuracy": last - 5,
             "new_task_accuracy": last + 2.5}
    hist += [Metric(k, v, 2000, 2) for k, v in final.items()]
    client.log_batch(rid, metrics=hist, params=ps)
    if tmp is not None:
        path = tmp / f"{rid}.csv"
        path.write_text("session_1,session_2,session_3\n" + "\n".join(
            ",".join(f"{v:.4f}" for v in row) + "," * (3 - len(row)) for row in m) + "\n")
        d = tmp / rid
        d.mkdir()
        (d / "accuracy_matrix.csv").write_text(path.read_text())
        client.log_artifact(rid, str(d / "accuracy_matrix.csv"))
    if status != "RUNNING":  # create_run leaves a run RUNNING, like a trial cut off mid-way
        client.set_terminated(rid, status)
    return rid


def _study(client, name, values, tmp, extra=True, params_for=None):
    exp = client.create_experiment(name, artifact_location=(tmp / "art" / name).as_uri())
    parent = client.create_run(exp, tags={"pace.role": "study", "pace.kind": "ablation"}).info.run_id
    for (variant, bench, seed), v in values.items():
        _log_child(client, exp, parent, variant, bench, seed, v, tmp=tmp,
                   params=params_for(variant) if params_for else None)
    if extra:  # must be ignored: absurd values would move every mean
        _log_child(client, exp, parent, "full", "esc50", 3, 10.0, status="RUNNING")
        _log_child(client, exp, parent, "wo_fsa", "sc2", 2, 0.0, status="FAILED")
    client.set_terminated(parent, "FINISHED")
    return exp, parent


def _rho_values():
    vals = {}
    for rho, base in (("0.9", 90.0), ("0.94", 94.0), ("None", 80.0)):
        for bench, off in (("esc50", 0.0), ("sc2", -10.0)):
            for seed in (0, 1):
                vals[(rho, bench, seed)] = base + off + seed  # mean = base + off + 0.5
    return vals


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # one database for the module: creating an MLflow sqlite schema takes ~10 s on 2 cores
    tmp = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    files = tmp / "files"
    files.mkdir()
    _, parent = _study(client, "abl", STUDY_A, files)
    _study(client, "abl_b", STUDY_B, files, extra=False)
    _study(client, "rho", _rho_values(), files, extra=False, params_for=lambda rho: {"method.rho_layer": rho})
    _sweep(client, files)
    return uri, client, parent, tmp


# A sweep started twice (instances "old", then "new" after --fresh), as pace.sweep tags it.
# Newest instance: (method, {searched params}, seed) -> last_accuracy
SWEEP_NEW = [("pace", {"method.lr_backbone": "0.0123456", "method.rho_layer": "0.9"}, 0, 90.0),
             ("pace", {"method.lr_backbone": "0.03", "method.rho_layer": "0.95"}, 0, 96.0),
             ("pace", {"method.lr_backbone": "0.03", "method.rho_layer": "0.95"}, 1, 98.0),
             ("ranpac", {"method.analytic.scale": "0.1"}, 0, 80.0),
             ("ranpac", {"method.analytic.scale": "0.5"}, 0, 85.0),
             ("ranpac", {"method.analytic.scale": "0.5"}, 1, 87.0),
             ("simplecil", {}, 0, 70.0),
             ("simplecil", {}, 1, 72.0)]
# must never reach the newest instance's report: absurd values would move every cell
SWEEP_OLD = [("pace", {"method.lr_backbone": "0.03", "method.rho_layer": "0.95"}, 0, 1.0),
             ("simplecil", {}, 0, 2.0)]


def _sweep(client, tmp):
    exp = client.create_experiment("qs", artifact_location=(tmp / "art" / "qs").as_uri())
    for instance, runs, start in (("old", SWEEP_OLD, 1_000), ("new", SWEEP_NEW, 2_000)):
        parent = client.create_run(exp, start_time=start, tags={
            "pace.role": "study", "pace.kind": "sweep", "pace.study_instance": instance}).info.run_id
        for k, (method, params, seed, last) in enumerate(runs):
            # settings that differ between runs but are no configuration: seeds, threads
            _log_child(client, exp, parent, "default", "synthetic", seed, last, tmp=tmp if instance == "new" else None,
                       params={"method.name": method, "seeds.split": seed, "runtime.num_threads": k % 2 + 1,
                               **params}, tags={"method": method, "pace.study_instance": instance})
        client.set_terminated(parent, "FINISHED")


EXPECTED_MD = """\
**abl: last_accuracy**

| variant | esc50 | sc2 |
|---|---:|---:|
| full | **95.00 ± 1.00 (3)** | **93.00 ± 2.65 (3)** |
| wo_fsa | 92.00 ± 2.00 (3) Δ -3.00 (-3.16%) | 82.00 ± 2.83 (2)† Δ -11.00 (-11.83%) |

mean ± sample std (ddof=1) over seeds, (n) runs; best per column in bold.
† missing seeds: wo_fsa on sc2 has no run for seed 2 (its mean covers 2 of the table's 3 seeds).
Δ: difference to 'full' in points (relative change in %).
"""


def test_report_table_from_store(store):
    uri, client, parent, tmp = store
    out = tmp / "rep"
    res = run_report(uri, "abl", out, baseline="full", max_heatmaps=3)
    t = res.tables["last_accuracy"]
    assert to_markdown(t) == EXPECTED_MD
    assert any("ignored 1 FAILED run(s), 1 RUNNING run(s)" in n for n in res.notes)
    assert to_csv(t).splitlines() == [
        "variant,esc50,sc2",
        "full,95.00 ± 1.00 (3)*,93.00 ± 2.65 (3)*",
        "wo_fsa,92.00 ± 2.00 (3) Δ -3.00 (-3.16%),82.00 ± 2.83 (2)† Δ -11.00 (-11.83%)"]
    tex = to_latex(t)
    assert r"\textbf{95.00 $\pm$ 1.00 (3)}" in tex and r"wo\_fsa" in tex and r"\textsuperscript{\dag}" in tex
    # the numbers behind the cells
    rec = {(r["row"], r["column"]): r for r in t.records}
    assert rec[("full", "sc2")]["std"] == pytest.approx(math.sqrt(7))
    assert rec[("wo_fsa", "sc2")]["std"] == pytest.approx(math.sqrt(8))
    assert rec[("wo_fsa", "sc2")]["flagged"] and rec[("wo_fsa", "sc2")]["missing_seeds"] == "2"
    assert rec[("wo_fsa", "esc50")]["delta"] == pytest.approx(-3.0)
    names = {p.name for p in res.files}
    assert {"table_last_accuracy.md", "table_last_accuracy.csv", "table_last_accuracy.tex",
            "table_last_accuracy_long.csv"} <= names
    assert (out / "table_last_accuracy.md").read_text() == EXPECTED_MD
    # figures: 3 per-trial heat maps, seed-mean heat maps, curves, bars and planes per benchmark
    pngs = [p for p in res.files if p.suffix == ".png"]
    expected = {"accuracy_curves_esc50.png", "accuracy_curves_sc2.png", "forgetting_curves_esc50.png",
                "forgetting_curves_sc2.png", "first_vs_new_esc50.png", "first_vs_new_sc2.png",
                "stability_plasticity_esc50.png", "stability_plasticity_sc2.png",
                "heatmap_mean_full_esc50.png", "heatmap_mean_wo_fsa_sc2.png"}
    assert expected <= {p.name for p in pngs}
    assert sum(p.name.startswith("heatmap_") and "_seed" in p.name for p in pngs) == 3
    _check_pngs(pngs)
    # everything was logged to the parent run
    assert res.logged_to == parent
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/table_last_accuracy.md" in logged and "report/figures" in logged
    assert len(client.list_artifacts(parent, "report/figures")) == len(pngs)


def _check_pngs(paths):
    for p in paths:
        assert p.stat().st_size > 0
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    try:
        from PIL import Image
    except ImportError:
        return
    for p in paths:
        with Image.open(p) as im:
            im.verify()
            assert im.size[0] > 50 and im.size[1] > 50


def test_compare_differences(store):
    uri, _, _, tmp = store
    res = run_compare(uri, "abl", "abl_b", tmp / "cmp", formats=["md"])
    t = res.tables["last_accuracy"]
    assert t.columns == ["esc50 [abl]", "esc50 [abl_b]", "esc50 Δ (B−A)",
                         "sc2 [abl]", "sc2 [abl_b]", "sc2 Δ (B−A)"]
    assert t.rows == ["full", "wo_fsa"]
    assert t.cells[0] == ["95.00 ± 1.00 (3)", "96.00 ± 0.50 (3)", "+1.00", "93.00 ± 2.65 (3)", "–", "–"]
    # B: 91 95 97 -> 94.333, std sqrt(((10/3)^2 + (2/3)^2 + (8/3)^2) / 2) = sqrt(28/3) = 3.0551
    assert t.cells[1] == ["92.00 ± 2.00 (3)", "94.33 ± 3.06 (3)", "+2.33", "82.00 ± 2.83 (2)†", "–", "–"]
    assert t.best[0] == [True, True, False, True, False, False]
    diffs = {(r["row"], r["column"]): r["diff"] for r in t.records}
    assert diffs[("wo_fsa", "esc50")] == pytest.approx(94 + 1 / 3 - 92)
    assert math.isnan(diffs[("full", "sc2")])
    assert (tmp / "cmp" / "compare_last_accuracy.md").is_file()


def test_pure_aggregation_and_grouping(store):
    uri = store[0]
    study = load_study(uri, "abl")
    assert len(study.runs) == 11  # the RUNNING and FAILED runs are gone
    rows, notes = tidy(study.runs, ["variant", "benchmark"], "last_accuracy")
    cells = aggregate(rows, ["variant"], "benchmark")
    c = cells[(("wo_fsa",), "sc2")]
    assert (c.mean, c.n, c.seeds) == (82.0, 2, ("0", "1"))
    assert summarize([1.0]).n == 1 and math.isnan(summarize([1.0]).std)
    with pytest.raises(ValueError, match="no run has metric 'last_acc'.*last_accuracy"):
        tidy(study.runs, ["variant"], "last_acc")
    with pytest.raises(ValueError, match="no run has a tag or param 'varient'"):
        tidy(study.runs, ["varient"], "last_accuracy")
    # lower is better for forgetting: the minimum is marked
    t = build_table({(("a",), "x"): summarize([5.0, 7.0]), (("b",), "x"): summarize([1.0, 3.0])}, "forgetting")
    assert t.best == [[False], [True]] and FLAG not in "".join(t.cells[0] + t.cells[1])


def test_matrix_csv_round_trip(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("session_1,session_2\n100.0000,\n90.0000,80.0000\n")
    m = read_matrix_csv(p)
    assert m[0, 0] == 100 and math.isnan(m[0, 1]) and m[1, 1] == 80


def test_sensitivity_sweep_param(store, tmp_path, capsys):
    uri = store[0]
    out = tmp_path / "rep"
    rc = main(["report", "--experiment", "rho", "--tracking-uri", uri, "--out", str(out),
               "--sweep-param", "method.rho_layer", "--format", "md", "--max-heatmaps", "0"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| method.rho_layer | esc50 | sc2 | avg |" in stdout
    # rows in numeric order, text last; avg = mean of the column means
    lines = [ln for ln in stdout.splitlines() if ln.startswith("| 0.9") or ln.startswith("| None")]
    assert lines == ["| 0.9 | 90.50 ± 0.71 (2) | 80.50 ± 0.71 (2) | 85.50 |",
                     "| 0.94 | **94.50 ± 0.71 (2)** | **84.50 ± 0.71 (2)** | **89.50** |",
                     "| None | 80.50 ± 0.71 (2) | 70.50 ± 0.71 (2) | 75.50 |"]
    sens = out / "figures" / "sensitivity_method.rho_layer.png"
    _check_pngs([sens])


def test_cli_errors(store, capsys):
    uri, _, _, tmp = store
    assert main(["report", "--experiment", "nope", "--tracking-uri", uri]) == 2
    assert "no experiment 'nope' in sqlite" in capsys.readouterr().err
    assert main(["report", "--experiment", "abl", "--tracking-uri", f"sqlite:///{tmp}/missing.db"]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert main(["report", "--experiment", "abl", "--tracking-uri", uri, "--baseline", "nope",
                 "--out", str(tmp / "x"), "--no-figures"]) == 2
    assert "baseline 'nope' is not a row; rows: full, wo_fsa" in capsys.readouterr().err


def test_runs_stopped_early_by_the_scheduler_are_left_out():
    import pandas as pd

    from pace.report.read import select_runs

    df = pd.DataFrame({
        "run_id": ["p", "a", "b"], "status": ["FINISHED"] * 3,
        "tags.mlflow.parentRunId": [None, "p", "p"],
        "tags.pace.stopped_early": [None, None, "true"],
    })
    runs, parents, notes = select_runs(df)
    assert list(runs["run_id"]) == ["a"] and parents == ["p"]
    assert any("stopped early" in n for n in notes)


SWEEP_MD = """\
**qs: last_accuracy**

| method [configuration] | synthetic |
|---|---:|
| pace [lr_backbone=0.0123, rho_layer=0.9] | 90.00 (1)† |
| pace [lr_backbone=0.03, rho_layer=0.95] | **97.00 ± 1.41 (2)** |
| ranpac [analytic.scale=0.1] | 80.00 (1)† |
| ranpac [analytic.scale=0.5] | 86.00 ± 1.41 (2) |
| simplecil | 71.00 ± 1.41 (2) |

mean ± sample std (ddof=1) over seeds, (n) runs; best per column in bold.
† missing seeds: pace [lr_backbone=0.0123, rho_layer=0.9] on synthetic has no run for seed 1 (its mean covers 1 of \
the table's 2 seeds); ranpac [analytic.scale=0.1] on synthetic has no run for seed 1 (its mean covers 1 of the \
table's 2 seeds).
runs of study instance new (tag pace.study_instance)
"""


def test_sweep_report_compares_configurations_of_the_newest_instance(store, tmp_path, capsys):
    uri = store[0]
    rc = main(["report", "--experiment", "qs", "--tracking-uri", uri, "--out", str(tmp_path / "r"),
               "--format", "md", "--no-log"])
    assert rc == 0
    out, err = capsys.readouterr()
    assert "study instance new of qs (the newest; --all-instances for every one)" in out
    assert (tmp_path / "r" / "table_last_accuracy.md").read_text() == SWEEP_MD
    assert "2 run(s) of 1 earlier study instance(s) left out (--all-instances to include them)" in err
    assert ("runs of one method differ in searched parameters (method.analytic.scale, method.lr_backbone, "
            "method.rho_layer): one row per configuration") in err
    pngs = sorted((tmp_path / "r" / "figures").glob("*.png"))
    assert {"accuracy_curves_synthetic.png", "stability_plasticity_synthetic.png",
            "first_vs_new_synthetic.png"} <= {p.name for p in pngs}
    _check_pngs(pngs)


def test_all_instances_pools_every_start(store, tmp_path):
    uri = store[0]
    res = run_report(uri, "qs", tmp_path / "r", group_by=["method"], figures=False, log=False, formats=["md"],
                     all_instances=True)
    assert res.instance is None
    rec = {r["row"]: r for r in res.tables["last_accuracy"].records}
    # explicit --group-by method pools configurations (and says so); the old instance's runs are in
    assert rec["simplecil"]["mean"] == pytest.approx((70 + 72 + 2) / 3) and rec["simplecil"]["n"] == 3
    assert rec["pace"]["n"] == 4 and rec["pace"]["mean"] == pytest.approx((90 + 96 + 98 + 1) / 4)
    assert any("several runs share a seed in one cell" in n for n in res.notes)
    # every seed is present in every cell: no dagger, however n differs
    assert not any(r["flagged"] for r in rec.values())
    assert FLAG not in to_markdown(res.tables["last_accuracy"])


def test_varied_params_and_configuration_labels():
    import pandas as pd

    from pace.report.cells import configurations, varied_params

    df = pd.DataFrame({
        "run_id": list("abcde"), "tags.method": ["pace", "pace", "pace", "ranpac", "ranpac"],
        "tags.benchmark": ["x"] * 5,
        "params.method.lr": ["0.011111", "0.011112", "0.011111", "1", "1"],  # two 3-digit-equal values
        "params.seed": ["0", "1", "2", "0", "1"], "params.data.synthetic_seed": ["0", "1", "2", "0", "1"],
        "params.runtime.num_threads": ["1", "2", "1", "1", "2"]})
    assert varied_params(df, ["method", "benchmark"]) == {("pace", "x"): ["method.lr"]}
    labels = configurations(df, ["method"], "benchmark")
    # shortened values would merge a and b: the full values are kept
    assert list(labels) == ["pace [lr=0.011111]", "pace [lr=0.011112]", "pace [lr=0.011111]", "ranpac", "ranpac"]
    assert configurations(df[df["tags.method"] == "ranpac"], ["method"], "benchmark") is None


def test_pick_instance_reads_untagged_stores_whole():
    import pandas as pd

    from pace.report.read import pick_instance

    df = pd.DataFrame({"run_id": ["p1", "p2", "a", "b"], "start_time": [1, 2, 3, 4],
                       "tags.pace.role": ["study", "study", None, None],
                       "tags.mlflow.parentRunId": [None, None, "p1", "p2"],
                       "tags.pace.study_instance": ["i1", None, "i1", None]})
    # the newest parent (p2) predates the tag: every run, as before
    runs, instance, notes = pick_instance(df)
    assert instance is None and list(runs["run_id"]) == ["p1", "p2", "a", "b"] and notes == []
    # children without the tag follow their parent's instance
    df.loc[1, "tags.pace.study_instance"] = "i2"
    runs, instance, notes = pick_instance(df)
    assert instance == "i2" and list(runs["run_id"]) == ["p2", "b"]


def test_one_colour_per_method_in_every_figure():
    from pace.figures import styles

    labels = ["simplecil", "ranpac [scale=0.5]", "pace [lr=0.01]", "ranpac [scale=0.1]", "pace [lr=0.03]"]
    st = styles(labels)
    assert st == styles(list(reversed(labels)))  # built from the set of labels, not their order
    assert st["pace [lr=0.01]"].color == st["pace [lr=0.03]"].color
    assert len({st[x].color for x in ("pace [lr=0.01]", "ranpac [scale=0.1]", "simplecil")}) == 3
    # configurations of one method differ in marker and carry numbered short labels
    assert st["ranpac [scale=0.1]"].marker != st["ranpac [scale=0.5]"].marker
    assert (st["ranpac [scale=0.1]"].short, st["ranpac [scale=0.5]"].short, st["simplecil"].short) == \
        ("ranpac #1", "ranpac #2", "simplecil")


def test_plane_labels_do_not_collide():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pace.figures import _text_box, place_labels

    fig = Figure(figsize=(5, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # four configurations on one spot and two close neighbours, as in a small sweep
    pts = [(100.0, 96.5, "ranpac #1", "C1"), (100.0, 96.5, "ranpac #2", "C1"), (100.0, 96.5, "ranpac #3", "C1"),
           (100.0, 96.5, "ranpac #4", "C1"), (100.0, 97.0, "pace", "C0"), (99.8, 96.6, "simplecil", "C2")]
    ax.plot([p[0] for p in pts] + [90.0], [p[1] for p in pts] + [80.0], "o")
    anns = place_labels(fig, ax, pts)
    assert [a.get_text() for a in anns] == [p[2] for p in pts]
    r = fig.canvas.get_renderer()
    boxes = [_text_box(a, r) for a in anns]  # the text, without its leader line
    frame = ax.get_window_extent(r)
    for i, b in enumerate(boxes):
        assert frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1
        for c in boxes[i + 1:]:
            assert not b.overlaps(c), (anns[i].get_text(), b, c)
        for x, y, _, _ in pts:  # no label covers a point
            u, v = ax.transData.transform((x, y))
            assert not (b.x0 < u < b.x1 and b.y0 < v < b.y1)


def test_best_trial_line_names_the_best_and_its_ties():
    from pace.console import best_trial_line

    rows = [{"trial": "t001", "status": "finished", "objective": 90.0, "p": "method.name=pace"},
            {"trial": "t002", "status": "finished", "objective": 96.5, "p": "method.name=ranpac a=1"},
            {"trial": "t003", "status": "stopped early", "objective": 99.0, "p": "x"},  # stopped early: not comparable
            {"trial": "t004", "status": "finished", "objective": 96.5, "p": "method.name=ranpac a=2"},
            {"trial": "t005", "status": "error", "objective": None, "p": "y"}]
    describe = lambda r: r["p"]  # noqa: E731
    assert best_trial_line(rows, "val_last_accuracy", "max", describe) == \
        "best trial: t002 (val_last_accuracy 96.50): method.name=ranpac a=1; tied with t004"
    assert best_trial_line(rows, "forgetting", "min", describe) == \
        "best trial: t001 (forgetting 90.00): method.name=pace"
    assert best_trial_line(rows[4:], "val_last_accuracy", "max", describe) == \
        "best trial: none (no finished trial reported val_last_accuracy)"


def test_paired_report_from_store(store, tmp_path, capsys):
    """wo_fsa - full per (benchmark, seed), by hand: esc50 -4 -3 -2, sc2 -11 -8 (sc2 seed 2: full only)."""
    uri, *_ = store
    assert main(["report", "--experiment", "abl", "--paired", "full", "--tracking-uri", uri,
                 "--out", str(tmp_path), "--format", "md,csv"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| wo_fsa |") and "yes" in line)
    assert "| -4.00 | -3.00 | -2.00 | -11.00 | -8.00 | – | -5.60 |" in row and "| 5 | yes |" in row
    assert "wo_fsa vs full: -5.60 points" in out and "full has the higher last accuracy" in out
    assert "| full | 1 |" in out and "| wo_fsa | 2 |" in out  # two tiers in the ranking
    assert (tmp_path / "paired_last_accuracy.csv").is_file() and (tmp_path / "ranking_last_accuracy.md").is_file()
    assert (tmp_path / "paired_last_accuracy.png").read_bytes()[:4] == b"\x89PNG"  # the forest plot


def test_paired_figure_draws_each_difference_with_its_interval(tmp_path, monkeypatch):
    """The forest plot shows the table's numbers: a hand-made separable gap (solid) and a zero gap (hollow)."""
    import pandas as pd

    from pace import figures
    from pace.report.render import paired_figure

    rows = pd.DataFrame([{"variant": v, "benchmark": "b", "seed": str(s), "value": val}
                         for s in range(4) for v, val in (("ref", 50.0 + s), ("gap", 45.0 + s),
                                                            ("same", 50.0 + s + (1 if s % 2 else -1)))])
    seen = {}
    orig = figures.paired_differences

    def spy(diffs, path, reference, xlabel):
        seen.update({d[0]: d for d in diffs})
        return orig(diffs, path, reference, xlabel)

    monkeypatch.setattr(figures, "paired_differences", spy)
    from pace.report.paired import paired_differences

    diffs = paired_differences(rows, "variant", "ref", ("benchmark", "seed"))
    out = paired_figure(list(diffs.values()), "ref", "last_accuracy", tmp_path / "p.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert list(seen) == ["same", "gap"]  # largest mean difference on top
    name, units, mean, lo, hi = seen["gap"]
    assert units == [-5.0] * 4 and (mean, lo, hi) == (-5.0, -5.0, -5.0)
    assert seen["same"][2] == 0.0 and seen["same"][3] < 0 < seen["same"][4]


def test_against_paper_names_what_differs_from_the_papers_setting(store, tmp_path, capsys):
    uri, *_ = store
    assert main(["report", "--experiment", "abl", "--against", "paper", "--tracking-uri", uri,
                 "--out", str(tmp_path), "--format", "md"]) == 0
    out = capsys.readouterr().out
    # the runs are eat-base on esc50 / sc2, but with 3 sessions instead of the paper's 10 / 7
    assert "sessions 3 ≠ 10" in out or "3 ≠ 10" in out, out
    assert (tmp_path / "paper_last_accuracy.md").is_file()
    assert main(["report", "--compare", "abl", "abl_b", "--against", "paper", "--tracking-uri", uri]) == 2
    assert "--paired and --against apply to --experiment alone" in capsys.readouterr().err


def test_pooled_experiments_and_where_narrow_the_runs(store, tmp_path, capsys):
    """--experiment abl,abl_b pools both studies' runs; --where keeps a benchmark. sc2 exists in abl only:
    wo_fsa - full per seed = 80 - 91, 84 - 92 -> -11, -8 (seed 2 of wo_fsa is missing)."""
    from pace.report.cli import run_paired
    from pace.report.read import load_study

    uri, *_ = store
    pooled = load_study(uri, "abl,abl_b")
    assert len(pooled.runs) == len(STUDY_A) + len(STUDY_B) and pooled.parent_ids == []
    assert any("runs of 2 experiments pooled (abl, abl_b)" in n for n in pooled.notes)
    esc = load_study(uri, "abl,abl_b", where={"benchmark": ["esc50"]})
    assert len(esc.runs) == 12 and any(n.startswith("kept 12 of 17 runs where benchmark in esc50") for n in esc.notes)
    res = run_paired(uri, "abl,abl_b", tmp_path, "full", where={"benchmark": ["sc2"]}, formats=["md"])
    rec = res.tables["last_accuracy paired"].records[0]
    assert (rec["other"], rec["mean_diff"], rec["n"]) == ("wo_fsa", -9.5, 2)
    with pytest.raises(ValueError, match="--where benchmrk: no run has a tag or param 'benchmrk'; did you mean"):
        load_study(uri, "abl", where={"benchmrk": ["sc2"]})
    assert main(["report", "--experiment", "abl", "--where", "benchmark", "--tracking-uri", uri]) == 2
    assert "--where 'benchmark': expected KEY=VALUE" in capsys.readouterr().err
