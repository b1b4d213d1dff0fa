"""The study report and the paper's metrics (pure: no Prefect, no store writes).

- `metrics`: the paper's metrics computed from rows (evaluation, training, compression);
  the evaluate stage uses it too.
- `model`: the report's input contract (`ReportInputs`) and the data it derives (`ReportData`).
- `tables`, `findings` (+ `claims`), `figures`: Tables 1-11, the directional findings, Figures 2-4.
- `stats` (chance, the paired bootstrap, decisions; numpy only) and `compare` (cells -> paired
  comparisons and the words a finding prints): the rules that keep findings from overclaiming.
- `build`: `write_report(inputs, out_dir)` -> report.md, report.html, figures/*.png.

Nothing is imported here, so `report.metrics` does not pull in matplotlib.
"""
