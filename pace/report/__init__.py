"""``pace report``: MLflow runs -> pandas -> tables (Markdown, CSV, LaTeX) and figures.

Layers, lowest first, so the arithmetic is testable without a store:
- ``read``: the store -> the FINISHED child runs of one study instance (``load_study``), metric
  histories and accuracy-matrix artifacts;
- ``cells``: runs -> one tidy row per run -> ``Cell`` (mean, sample std, n over seeds) per group;
- ``tables``: cells -> ``Table`` (best marks, missing-seed flags, deltas) and its formats;
- ``paired``: paired differences per (benchmark, seed) with bootstrap intervals, and tiers of
  methods the data do not separate;
- ``paper``: the paper's published cells (``paper_results.yaml``) beside ours, differenced only where
  the setting matches;
- ``render``: table files, figures (``pace.figures``), the copy logged to the parent run;
- ``cli``: ``run_report`` / ``run_compare`` and the ``pace report`` command.
"""
