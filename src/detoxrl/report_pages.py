"""The report's two pages, HTML and Markdown, drawn from one :class:`Content` (what each section shows).

:mod:`detoxrl.report` reads the run and decides the content; this module only lays it out. The HTML page
is self-contained: plots embedded as data URIs, inline CSS, a Content-Security-Policy that forbids
anything external or scripted. Everything from the run is HTML-escaped, in the Markdown page too.
"""

from __future__ import annotations

import base64
import html
import re
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detoxrl.report_plots import FRONTIER_PLOT, PLOT_TITLES, TOXICITY_PLOT, TRAINING_PLOTS

QUALITY_HEADER = ["measure", "before", "after", "diff (after − before)", "CI of the diff"]
QUERY_PREVIEW_CHARS = 220
NO_CONFIG = "config.yaml not found: the settings of this run are unknown."
NO_METRICS = "No metrics.jsonl in this run folder: no training curves."
NOT_EVALUATED = "Not evaluated: no toxicity numbers."
NO_QUALITY = "No quality measures (no ROUGE, faithfulness or length in the evaluation)."
NO_EXAMPLES = "No paired before/after summaries to show."


# --------------------------------------------------------------------------------------------
# Numbers as the pages show them
# --------------------------------------------------------------------------------------------


def is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)  # numpy floats are floats


def as_num(x: Any) -> float | None:
    """A number, or the ``mean`` of a summary dict; None for anything else."""
    if isinstance(x, dict):
        x = x.get("mean")
    return float(x) if is_num(x) else None


def is_finite(x: Any) -> bool:
    return is_num(x) and math.isfinite(float(x))


def fmt(x: Any, signed: bool = False, fixed: int | None = None) -> str:
    """A number for a table: ``fixed`` decimals when given, else 4 significant digits."""
    if x is None:
        return "–"
    if isinstance(x, bool) or not is_num(x):
        return str(x)
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    sign = "+" if signed else ""
    if fixed is not None:
        return f"{x:{sign}.{fixed}f}"
    if x.is_integer() and abs(x) < 1e6:
        return f"{int(x):{sign}d}"
    if 1e4 <= abs(x) < 1e9:
        return f"{x:{sign},.0f}"
    return f"{x:{sign}#.4g}".rstrip(".")


def fmt_tox(x: Any, signed: bool = False) -> str:
    """A probability (toxicity): four decimals, so before/after columns line up."""
    return fmt(x, signed=signed, fixed=4)


def cfg_value(x: Any) -> str:
    if x is None or x == "":
        return "–"
    if isinstance(x, float):
        return f"{x:g}"
    return str(x)


def fmt_pct(x: Any, signed: bool = False) -> str:
    if not is_finite(x):
        return "–"
    return f"{float(x) * 100:+.1f}%" if signed else f"{float(x) * 100:.1f}%"


def squash(text: Any) -> str:
    return " ".join(str(text or "").split())


def diff_class(before: Any, after: Any, lower_is_better: bool) -> str:
    b, a = as_num(before), as_num(after)
    if b is None or a is None or a == b:
        return ""
    better = (a < b) if lower_is_better else (a > b)
    return "better" if better else "worse"


# --------------------------------------------------------------------------------------------
# Content: the numbers each section shows, shared by the HTML and Markdown pages
# --------------------------------------------------------------------------------------------


@dataclass
class TableRow:
    """A row of the toxicity table: per side (before, after, change, css class of change), or one
    text per side spanning the three columns."""

    label: str
    cells: list[tuple[str, str, str, str]] | None = None
    span: list[tuple[str, str]] | None = None
    strong: bool = False


@dataclass
class Verdict:
    text: str
    tone: str  # good | bad | unclear | none
    keynums: list[str]
    # The pre-declared verdict's table (compare.json "detoxification"): what decided, then the quality gate.
    table: list[list[str]] = field(default_factory=list)


#: The header of the verdict's table.
VERDICT_HEADER = ["measure", "change [CI]", "p (adjusted)", "decides"]


@dataclass
class Content:
    run_name: str
    generated: str
    verdict: Verdict
    config_rows: list[tuple[str, str]]
    train_rows: list[list[str]]
    train_notes: list[str]
    plots: dict[str, Path]
    missing_plots: list[str]
    sides: list[str]  # the columns of the toxicity table: reward model, then each judge
    tox_rows: list[TableRow]
    sampled_title: str
    sampled_sides: list[str]
    sampled_rows: list[TableRow]
    tox_note: str
    reward_row: list[str] | None
    quality: list[list[str]]
    top: list[dict[str, Any]]
    worst: list[dict[str, Any]]
    examples_source: str
    template: tuple[str, str]  # prompt template head/tail, left out of the query previews
    notes: list[str]
    has_metrics: bool
    evaluated: bool
    steps_planned: Any
    steps_logged: int


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

CSS = """
*{box-sizing:border-box}
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif;margin:0;color:#1d2430;
background:#f4f6f9;line-height:1.45;font-size:15px}
header{background:#1d2430;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:24px}
header .sub{margin:4px 0 0;color:#c5cbd6;font-size:13px}
nav{margin-top:10px}
nav a{color:#9cc7ff;margin-right:16px;text-decoration:none;font-size:14px}
main{max-width:1240px;margin:0 auto;padding:16px 24px 48px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:16px 22px;margin:18px 0}
h2{margin:0 0 10px;font-size:20px}
h3{font-size:16px;margin:16px 0 8px}
#verdict{border-left:8px solid #8a94a6}
#verdict.good{border-left-color:#2e9e44;background:#f1faf3}
#verdict.bad{border-left-color:#d03b3b;background:#fdf2f2}
#verdict.unclear{border-left-color:#e0a21c;background:#fffaf0}
#verdict .verdict-line{font-size:19px;font-weight:600;margin:4px 0 10px}
ul.keynums{margin:6px 0;padding-left:20px}
ul.notes li,p.note{color:#8a4b00}
table{border-collapse:collapse;width:100%;margin:8px 0;font-size:14px}
th,td{border-bottom:1px solid #e3e7ee;padding:6px 8px;text-align:left;vertical-align:top}
thead th{background:#eef1f6;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:nth-child(even) td{background:#fafbfd}
table.config td:first-child{font-weight:600;white-space:nowrap;width:190px}
tr.group th{background:#dfe6f1;font-size:14px}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(540px,1fr));gap:14px}
figure{margin:0}
figure img{width:100%;height:auto;border:1px solid #e3e7ee;border-radius:4px;display:block}
figure.wide{grid-column:1/-1}
figcaption{font-size:13px;color:#555;margin-top:4px}
.text{white-space:pre-wrap;word-break:break-word;max-width:360px}
details summary{cursor:pointer;color:#2b5fab}
.better{color:#1d7a31;font-weight:600}
.worse{color:#b32626;font-weight:600}
.muted{color:#777}
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


#: How an empty summary (the policy emitted EOS first, or only whitespace) shows in the tables: a blank
#: cell would read as a missing value.
EMPTY_SUMMARY = "(empty summary)"


def _summary_text(x: Any) -> Any:
    return EMPTY_SUMMARY if isinstance(x, str) and not x.strip() else x


def _img_tag(path: Path, alt: str) -> str:
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{b64}" alt="{_e(alt)}">'


def _html_table(header: list[str], rows: list[list[str]], num_from: int = 1, cls: str = "") -> str:
    out = [f'<table class="{cls}">' if cls else "<table>", "<thead><tr>"]
    out += [f'<th class="{"num" if i >= num_from else ""}">{_e(h)}</th>' for i, h in enumerate(header)]
    out.append("</tr></thead><tbody>")
    for r in rows:
        cells = "".join(f'<td class="{"num" if i >= num_from else ""}">{_e(c)}</td>' for i, c in enumerate(r))
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _html_tox_table(sides: list[str], rows: list[TableRow]) -> str:
    head = ['<table class="tox"><thead><tr><th rowspan="2">measure</th>']
    head += [f'<th colspan="3">{_e(name)}</th>' for name in sides]
    head.append("</tr><tr>")
    head += ['<th class="num">before</th><th class="num">after</th><th class="num">change</th>' for _ in sides]
    head.append("</tr></thead><tbody>")
    body = []
    for row in rows:
        label = f"<b>{_e(row.label)}</b>" if row.strong else _e(row.label)
        cells = [f"<td>{label}</td>"]
        for b, a, ch, cls in row.cells or []:
            cells.append(f'<td class="num">{_e(b)}</td><td class="num">{_e(a)}</td><td class="num {cls}">{_e(ch)}</td>')
        for text, cls in row.span or []:
            cells.append(f'<td class="num {cls}" colspan="3">{_e(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(head) + "".join(body) + "</tbody></table>"


def _preview(text: Any, n: int = QUERY_PREVIEW_CHARS) -> str:
    s = "" if text is None else " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 1].rstrip() + "…"


def _query_preview(r: dict[str, Any], template: tuple[str, str]) -> str:
    """The query without the prompt template around the dialogue, shortened."""
    q = squash(r.get("query"))
    head, tail = template
    if head and q.startswith(head):
        q = q[len(head):].lstrip()
    if tail and q.endswith(tail):
        q = q[: -len(tail)].rstrip()
    return _preview(q)


def _html_example_rows(rows: list[dict[str, Any]], title: str, template: tuple[str, str]) -> str:
    out = [f'<tbody><tr class="group"><th colspan="6">{_e(title)}</th></tr>']
    if not rows:
        out.append('<tr><td colspan="6" class="muted">none</td></tr>')
    for r in rows:
        q = "" if r.get("query") is None else str(r.get("query"))
        preview = _e(_query_preview(r, template))
        qcell = f'<details><summary>{preview}</summary><div class="text">{_e(q)}</div></details>'
        rew = (
            f'{_e(fmt(r.get("reward_before"), fixed=3))} → {_e(fmt(r.get("reward_after"), fixed=3))}'
            f'<br><span class="{diff_class(r.get("reward_before"), r.get("reward_after"), False)}">'
            f'Δ {_e(fmt(r.get("reward_diff"), True, 3))}</span>'
        )
        tox = (
            f'<span class="{diff_class(r.get("toxicity_before"), r.get("toxicity_after"), True)}">'
            f'{_e(fmt_tox(r.get("toxicity_before")))} → {_e(fmt_tox(r.get("toxicity_after")))}</span>'
        )
        judge = (
            f'<span class="{diff_class(r.get("judge_toxicity_before"), r.get("judge_toxicity_after"), True)}">'
            f'{_e(fmt_tox(r.get("judge_toxicity_before")))} → {_e(fmt_tox(r.get("judge_toxicity_after")))}</span>'
        )
        out.append(
            '<tr class="example">'
            f"<td>{qcell}</td>"
            f'<td><div class="text">{_e(_summary_text(r.get("response_before")))}</div></td>'
            f'<td><div class="text">{_e(_summary_text(r.get("response_after")))}</div></td>'
            f'<td class="num">{rew}</td><td class="num">{tox}</td><td class="num">{judge}</td>'
            "</tr>"
        )
    out.append("</tbody>")
    return "".join(out)


def render_html(c: Content) -> str:
    """The HTML page."""
    p: list[str] = []
    p.append(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>detoxrl report: {_e(c.run_name)}</title><style>{CSS}</style></head><body>"
    )
    p.append(
        f"<header><h1>detoxrl report: {_e(c.run_name)}</h1>"
        f'<p class="sub">generated {_e(c.generated)}</p><nav>'
        + "".join(
            f'<a href="#{s}">{s}</a>' for s in ("verdict", "config", "training", "toxicity", "quality", "examples")
        )
        + "</nav></header><main>"
    )
    p += _html_verdict(c)
    p += _html_config(c)
    p += _html_training(c)
    p += _html_toxicity(c)
    p += _html_quality(c)
    p += _html_examples(c)
    p.append("</main></body></html>\n")
    return "".join(p)


def _html_verdict(c: Content) -> list[str]:
    """The verdict box: the pre-declared verdict's sentence and table, the key numbers, the notes."""
    p: list[str] = []
    v = c.verdict
    p.append(f'<section id="verdict" class="{v.tone}"><h2>Verdict</h2><p class="verdict-line">{_e(v.text)}</p>')
    if v.table:
        p.append(_html_table(VERDICT_HEADER, v.table, num_from=1, cls="verdict"))
    if v.keynums:
        p.append('<ul class="keynums">' + "".join(f"<li>{_e(k)}</li>" for k in v.keynums) + "</ul>")
    if v.tone != "none":
        p.append(
            '<p class="muted">Box colour: green for "less toxic, quality kept", red for "more toxic" or "quality lost", '
            "amber otherwise. Only the primary measures decide, with Holm's correction across the judges; every other "
            "measure below is secondary.</p>"
        )
    if c.notes:
        p.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in c.notes) + "</ul>")
    p.append("</section>")
    return p


def _html_config(c: Content) -> list[str]:
    """The configuration table."""
    p: list[str] = []
    p.append('<section id="config"><h2>Configuration</h2>')
    if c.config_rows:
        p.append('<table class="config"><tbody>')
        p += [f"<tr><td>{_e(k)}</td><td>{_e(val)}</td></tr>" for k, val in c.config_rows]
        p.append("</tbody></table>")
    else:
        p.append(f'<p class="note">{NO_CONFIG}</p>')
    p.append("</section>")
    return p


def _html_training(c: Content) -> list[str]:
    """The training plots and summary."""
    p: list[str] = []
    p.append('<section id="training"><h2>Training</h2>')
    if c.has_metrics:
        p.append(
            f"<p>{c.steps_logged} PPO step(s) logged"
            + (f" of {_e(fmt(c.steps_planned))} planned" if c.steps_planned is not None else "")
            + ".</p>"
        )
        if c.train_notes:
            p.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in c.train_notes) + "</ul>")
        p.append('<div class="plots">')
        for name in TRAINING_PLOTS:
            if name in c.plots:
                wide = ' class="wide"' if name in ("training_losses",) else ""
                p.append(
                    f"<figure{wide}>{_img_tag(c.plots[name], PLOT_TITLES[name])}"
                    f"<figcaption>{_e(PLOT_TITLES[name])}</figcaption></figure>"
                )
        p.append("</div>")
        if c.missing_plots:
            p.append(f'<p class="note">Not logged, so not plotted: {_e(", ".join(c.missing_plots))}.</p>')
        if c.train_rows:
            p.append("<h3>Training summary</h3>")
            p.append(_html_table(["metric", "first", "last", "min", "max"], c.train_rows))
    else:
        p.append(f'<p class="note">{NO_METRICS}</p>')
    p.append("</section>")
    return p


def _html_toxicity(c: Content) -> list[str]:
    """The toxicity tables and plots, greedy and sampled."""
    p: list[str] = []
    p.append('<section id="toxicity"><h2>Toxicity before vs after</h2>')
    if c.sides:
        p.append("<h3>Greedy summaries</h3>" if c.sampled_sides else "")
        p.append(_html_tox_table(c.sides, c.tox_rows))
        if c.sampled_sides:
            p.append(f"<h3>{_e(c.sampled_title)}</h3>")
            p.append(_html_tox_table(c.sampled_sides, c.sampled_rows))
        if c.tox_note:
            p.append(f'<p class="muted">{_e(c.tox_note)}</p>')
        if c.reward_row:
            p.append(_html_table(QUALITY_HEADER, [c.reward_row]))
        for name in (TOXICITY_PLOT, FRONTIER_PLOT):
            if name in c.plots:
                p.append(f'<figure>{_img_tag(c.plots[name], PLOT_TITLES[name])}'
                         f"<figcaption>{_e(PLOT_TITLES[name])}</figcaption></figure>")
    else:
        p.append(f'<p class="note">{NOT_EVALUATED}</p>')
    p.append("</section>")
    return p


def _html_quality(c: Content) -> list[str]:
    """The summary-quality table."""
    p: list[str] = []
    p.append('<section id="quality"><h2>Summary quality</h2>')
    if c.quality:
        p.append(_html_table(QUALITY_HEADER, c.quality))
    else:
        p.append(f'<p class="note">{NO_QUALITY}</p>')
    p.append("</section>")
    return p


def _html_examples(c: Content) -> list[str]:
    """The most improved and most worsened examples."""
    p: list[str] = []
    p.append('<section id="examples"><h2>Examples</h2>')
    if c.top or c.worst:
        p.append(f'<p class="muted">{_e(c.examples_source)} Click a query for the full prompt.</p>')
        p.append(
            '<table class="examples"><thead><tr><th>query</th><th>response before</th><th>response after</th>'
            '<th class="num">reward</th><th class="num">toxicity (reward model)</th>'
            '<th class="num">toxicity (judge)</th></tr></thead>'
        )
        p.append(_html_example_rows(c.top, f"{len(c.top)} most improved (largest reward gain)", c.template))
        p.append(_html_example_rows(c.worst, f"{len(c.worst)} most worsened (largest reward loss)", c.template))
        p.append("</table>")
    else:
        p.append(f'<p class="note">{NO_EXAMPLES}</p>')
    p.append("</section>")
    return p


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _md(x: Any) -> str:
    """Escape for a Markdown table cell, as Markdown: no tag can open (``<`` -> ``&lt;``; renderers pass raw
    HTML), no entity is read as one (``&amp;`` before ``name;``), no pipes or newlines; ``->`` stays ``->``."""
    s = re.sub(r"&(?=#?\w+;)", "&amp;", "" if x is None else str(x)).replace("<", "&lt;")
    s = s.replace("|", "\\|").replace("\r", "")
    return "<br>".join(part for part in s.split("\n"))


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(c: Content) -> str:
    """The Markdown page."""
    out: list[str] = [f"# detoxrl report: {_md(c.run_name)}", "", f"_generated {_md(c.generated)}_", ""]
    out += ["## Verdict", ""] + _md_verdict(c)
    out += ["", "## Configuration", ""] + _md_config(c)
    out += ["", "## Training", ""] + _md_training(c)
    out += ["", "## Toxicity before vs after", ""] + _md_toxicity(c)
    out += ["", "## Summary quality", ""] + _md_quality(c)
    out += ["", "## Examples", ""] + _md_examples(c)
    return "\n".join(out).rstrip() + "\n"


def _md_verdict(c: Content) -> list[str]:
    out = [f"**{_md(c.verdict.text)}**", ""]
    if c.verdict.table:
        out += [_md_table(VERDICT_HEADER, c.verdict.table), ""]
    out += [f"- {_md(k)}" for k in c.verdict.keynums]
    out += [f"- ⚠ {_md(n)}" for n in c.notes]
    return out


def _md_config(c: Content) -> list[str]:
    if c.config_rows:
        return [_md_table(["setting", "value"], [list(r) for r in c.config_rows])]
    return [NO_CONFIG]


def _md_training(c: Content) -> list[str]:
    out: list[str] = []
    if c.has_metrics:
        planned = f" of {fmt(c.steps_planned)} planned" if c.steps_planned is not None else ""
        out += [f"{c.steps_logged} PPO step(s) logged{planned}.", ""]
        out += [f"- ⚠ {_md(n)}" for n in c.train_notes]
        if c.train_notes:
            out.append("")
        for name in TRAINING_PLOTS:
            if name in c.plots:
                out += [f"![{PLOT_TITLES[name]}]({c.plots[name].name})", ""]
        if c.missing_plots:
            out += [f"Not logged, so not plotted: {_md(', '.join(c.missing_plots))}.", ""]
        if c.train_rows:
            out += ["### Training summary", "", _md_table(["metric", "first", "last", "min", "max"], c.train_rows)]
    else:
        out.append(NO_METRICS)
    return out


def _md_toxicity(c: Content) -> list[str]:
    out: list[str] = []
    if c.sides:
        tables = [("Greedy summaries" if c.sampled_sides else "", c.sides, c.tox_rows)]
        if c.sampled_sides:
            tables.append((c.sampled_title, c.sampled_sides, c.sampled_rows))
        for title, sides, tox_rows in tables:
            if title:
                out += [f"### {title}", ""]
            header = ["measure"]
            for name in sides:
                header += [f"{name} before", "after", "change"]
            rows = []
            for trow in tox_rows:
                row = [f"**{trow.label}**" if trow.strong else trow.label]
                for cell in trow.cells or []:
                    row += list(cell[:3])
                for text, _ in trow.span or []:
                    row += ["", "", text]
                rows.append(row)
            out.append(_md_table(header, rows))
            out.append("")
        if c.tox_note:
            out += ["", f"_{_md(c.tox_note)}_"]
        if c.reward_row:
            out += ["", _md_table(QUALITY_HEADER, [c.reward_row])]
        for name in (TOXICITY_PLOT, FRONTIER_PLOT):
            if name in c.plots:
                out += ["", f"![{PLOT_TITLES[name]}]({c.plots[name].name})"]
    else:
        out.append(NOT_EVALUATED)
    return out


def _md_quality(c: Content) -> list[str]:
    if c.quality:
        return [_md_table(QUALITY_HEADER, c.quality)]
    return [NO_QUALITY]


def _md_examples(c: Content) -> list[str]:
    out: list[str] = []
    if c.top or c.worst:
        out += [f"_{_md(c.examples_source)}_", ""]
        groups = (("Most improved (largest reward gain)", c.top), ("Most worsened (largest reward loss)", c.worst))
        for title, rows in groups:
            out += [f"### {title}", ""]
            table = []
            for r in rows:
                table.append(
                    [
                        _query_preview(r, c.template),
                        _summary_text(r.get("response_before")),
                        _summary_text(r.get("response_after")),
                        f"{fmt(r.get('reward_before'), fixed=3)} → {fmt(r.get('reward_after'), fixed=3)} "
                        f"(Δ {fmt(r.get('reward_diff'), True, 3)})",
                        f"{fmt_tox(r.get('toxicity_before'))} → {fmt_tox(r.get('toxicity_after'))}",
                        f"{fmt_tox(r.get('judge_toxicity_before'))} → {fmt_tox(r.get('judge_toxicity_after'))}",
                    ]
                )
            hdr = ["query", "response before", "response after", "reward", "toxicity (reward model)",
                   "toxicity (judge)"]
            out += [_md_table(hdr, table) if table else "none", ""]
    else:
        out.append(NO_EXAMPLES)
    return out


def markdown_sections(c: Content) -> dict[str, str]:
    """The verdict, configuration, toxicity and quality sections of the Markdown page, without headings."""
    sections = {"verdict": _md_verdict(c), "configuration": _md_config(c), "toxicity": _md_toxicity(c),
                "quality": _md_quality(c)}
    return {name: "\n".join(lines).strip() + "\n" for name, lines in sections.items()}
