"""The study report: `write_report(inputs, out_dir)` writes `report.md`, `report.html` and
`figures/*.png` from MEASURED data.

Contents: the paper's directional findings judged from the data (`findings`), Tables
1-11 (`tables`), the cost ledger (Table 12, `ledger`) and Figures 2-4 plus an accuracy-cost
Pareto view on the ledger's totals (`figures`). The
input contract, `ReportInputs`, is documented column by column in `model`; it is
re-exported here. The HTML is self-contained (inline CSS, figures embedded as data URIs);
the Markdown links the PNGs next to it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from .figures import write_figures
from .findings import findings, observations
from .model import (
    STATUS_INC,
    STATUS_NA,
    STATUS_NO,
    STATUS_OK,
    Finding,
    ReportData,
    ReportInputs,
    TableBlock,
    build_data,
)
from .tables import ALL_TABLES

__all__ = ["ReportInputs", "build_data", "render_markdown", "render_html", "render_table", "write_report"]

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .86rem; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; text-align: center; }
td:first-child, td:nth-child(2), td:nth-child(3) { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
.scroll { overflow-x: auto; }
.note { color: #555; font-size: .85rem; margin: .2rem 0; }
.missing { color: #a33; font-style: italic; }
.status { font-weight: bold; padding: .05rem .4rem; border-radius: .25rem; }
.REPRODUCED { background: #d7f0d7; color: #1d5e1d; }
.NOT-REPRODUCED { background: #f6d5d5; color: #7a1d1d; }
.NOT-TESTABLE { background: #eee; color: #555; }
.INCONCLUSIVE { background: #fbefcf; color: #6b5000; }
figure { margin: 1.2rem 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #444; font-size: .9rem; }
"""


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _md_table(t: TableBlock) -> list[str]:
    out = [f"### {t.title}", ""]
    if t.missing:
        return out + [f"*{t.missing}*", ""]
    out.append("| " + " | ".join(_md_cell(c) for c in t.columns) + " |")
    out.append("|" + "---|" * len(t.columns))
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    out.append("")
    out += [f"_{n}_  " for n in t.notes]
    return out + [""]


def render_table(t: TableBlock) -> str:
    """One table as Markdown text (the CLI prints the ledger this way)."""
    return "\n".join(_md_table(t))


def _md_finding(f: Finding) -> list[str]:
    return [f"### ({f.key}) {f.title}: **{f.status}**", "", f"- Paper: {f.paper}", f"- Rule: {f.rule}",
            "- Numbers:", *[f"  - {e}" for e in f.evidence], ""]


def headline(found: Sequence[Finding]) -> list[str]:
    """'N of M testable directional findings reproduced', counting testable findings only, then one
    line naming the findings that were not testable and why."""
    testable = [f for f in found if f.status != STATUS_NA]
    ok = sum(1 for f in testable if f.status == STATUS_OK)
    no = sum(1 for f in testable if f.status == STATUS_NO)
    inc = sum(1 for f in testable if f.status == STATUS_INC)
    out = [f"{ok} of {len(testable)} testable directional findings reproduced ({no} not reproduced, {inc} "
           "inconclusive); statuses are computed from the tables and records below."]
    part = [f for f in testable if f.tested < f.compared]
    if part:
        out.append(f"{len(part)} of them decided on part of their comparisons, the rest not testable: "
                   + ", ".join(f"({f.key}) {f.tested} of {f.compared}" for f in part) + ".")
    na = [f for f in found if f.status == STATUS_NA]
    if na:
        out.append(f"{len(na)} not testable: " + "; ".join(f"({f.key}) {f.why_na}" for f in na) + ".")
    return out


def _run_info(d: ReportData) -> list[tuple[str, str]]:
    info = [(str(k), str(v)) for k, v in d.inputs.run_info.items()]
    evaluated = sum(1 for c in d.cells if c.cell in d.metrics)
    trained = sum(1 for c in d.cells if c.cell in d.training)
    return info + [("cells", f"{len(d.cells)} ({trained} trained, {evaluated} evaluated)")]


def render_markdown(d: ReportData, found: Sequence[Finding], tables: Sequence[TableBlock],
                    figs: Sequence[tuple[Path, str]], base: Path) -> str:
    out = [f"# {d.inputs.title}", ""]
    out += [f"- **{k}**: {v}" for k, v in _run_info(d)]
    out += ["", "## Findings", ""]
    for line in headline(found):
        out += [line, ""]
    for f in found:
        out += _md_finding(f)
    obs = observations(d)
    if obs:
        out += ["### Observations (measured, not claimed by the paper: no status)", ""]
        out += [f"- {o}" for o in obs] + [""]
    out += ["## Tables", ""]
    for t in tables:
        out += _md_table(t)
    out += ["## Figures", ""]
    if not figs:
        out += ["*not available: no data for any figure*", ""]
    for path, caption in figs:
        out += [f"![{caption}]({path.relative_to(base).as_posix()})", "", f"*{caption}*", ""]
    return "\n".join(out) + "\n"


def _h(s: object) -> str:
    return html.escape(str(s))


def _html_table(t: TableBlock) -> str:
    parts = [f"<h3>{_h(t.title)}</h3>"]
    if t.missing:
        return parts[0] + f'<p class="missing">{_h(t.missing)}</p>'
    parts.append('<div class="scroll"><table><thead><tr>' + "".join(f"<th>{_h(c)}</th>" for c in t.columns)
                 + "</tr></thead><tbody>")
    parts += ["<tr>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>" for row in t.rows]
    parts.append("</tbody></table></div>")
    parts += [f'<p class="note">{_h(n)}</p>' for n in t.notes]
    return "\n".join(parts)


def _html_finding(f: Finding) -> str:
    cls = f.status.replace(" ", "-")
    items = "".join(f"<li>{_h(e)}</li>" for e in f.evidence)
    return (f'<h3>({_h(f.key)}) {_h(f.title)} <span class="status {cls}">{_h(f.status)}</span></h3>'
            f"<p><b>Paper:</b> {_h(f.paper)}<br><b>Rule:</b> {_h(f.rule)}</p><ul>{items}</ul>")


def render_html(d: ReportData, found: Sequence[Finding], tables: Sequence[TableBlock],
                figs: Sequence[tuple[Path, str]]) -> str:
    body = [f"<h1>{_h(d.inputs.title)}</h1>", "<ul>"]
    body += [f"<li><b>{_h(k)}</b>: {_h(v)}</li>" for k, v in _run_info(d)]
    body += ["</ul>", "<h2>Findings</h2>"]
    body += [f"<p>{_h(line)}</p>" for line in headline(found)]
    body += [_html_finding(f) for f in found]
    obs = observations(d)
    if obs:
        body.append("<h3>Observations (measured, not claimed by the paper: no status)</h3><ul>"
                    + "".join(f"<li>{_h(o)}</li>" for o in obs) + "</ul>")
    body.append("<h2>Tables</h2>")
    body += [_html_table(t) for t in tables]
    body.append("<h2>Figures</h2>")
    if not figs:
        body.append('<p class="missing">not available: no data for any figure</p>')
    for path, caption in figs:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        body.append(f'<figure><img alt="{_h(caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_h(caption)}</figcaption></figure>")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_h(d.inputs.title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(inputs: ReportInputs, out_dir: Path) -> list[Path]:
    """Write report.md, report.html and figures/*.png into `out_dir`; return every path written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    d = build_data(inputs)
    found = findings(d)
    tables = [build(d) for build in ALL_TABLES]
    figs = write_figures(d, out_dir / "figures")
    md = out_dir / "report.md"
    md.write_text(render_markdown(d, found, tables, figs, out_dir), encoding="utf-8")
    page = out_dir / "report.html"
    page.write_text(render_html(d, found, tables, figs), encoding="utf-8")
    return [md, page, *(p for p, _ in figs)]
