"""The study report and the paper's metrics (pure: no Prefect, no store writes).

- `metrics`: the paper's metrics computed from rows (evaluation, training, compression);
  the evaluate stage uses it too.
- `model`: the report's input contract (`ReportInputs`) and the data it derives (`ReportData`).
- `tables`, `findings`, `figures`: Tables 2-11, the directional findings, Figures 2-4.
- `build`: `write_report(inputs, out_dir)` -> report.md, report.html, figures/*.png.

Nothing is imported here, so `report.metrics` does not pull in matplotlib.
"""
