"""The report as one self-contained HTML page, for reading in a browser: `gpushare report --html`.

`write_html_report` writes `report.html` beside `report.tex`, from the same analysis: the
abstract as the LaTeX report words it, the results table, the Isolation section (capacity
first, then solo against shared) and the Plan section where their data was found, and the
observations. Every table sorts on a click of its header and a click on a figure shows it at
full size (a few lines of script in the page); the PNGs that `analyze` draws are inlined as
base64 images; the capacity curves and the noisy-neighbour curves are also drawn with Plotly,
whose script is inlined once, so that hovering a point shows its values. Nothing is fetched
when the page is viewed: no CDN, no link outside the file. Lines are coloured per sharing mode
(style.sharing_mode_colour).
"""

from __future__ import annotations

import base64
import json
import re
from html import escape
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..measure.metric_catalog import METRICS
from .run_tables import RunSet, summarize_runs
from .capacity import FIGURE as CAPACITY_FIGURE
from .capacity import TABLE as CAPACITY_TABLE
from .capacity import ALONE, Capacity, capacity_sentences, capacity_table, find_capacity, read_capacity, setting_key
from .compare import mode_list
from .isolation import LEVEL_AXIS, Interference, find_interference, read_interference
from .plan import FIGURE as PLAN_FIGURE
from .plan import TABLE as PLAN_TABLE
from .plan import find_plans, plan_sentences, read_plans
from .report import FIGURES, ISOLATION_FIGURES, isolation_observations, observations, tex, write_report
from .style import reader_names, sharing_mode_colour

HTML_NAME = "report.html"
NOISY_NEIGHBOUR = "noisy_neighbour"
DASHES = ["solid", "dash", "dot", "dashdot"]

# --- from the LaTeX report's text to plain text --------------------------------------------------

_UNESCAPE = {tex(ch): ch for ch in "\\&%$#_{}~^"}
"""What report.tex escapes, back to the character."""
_MATH = {r"$\times$": "×", r"$\rightarrow$": "→", r"$\geq$": "≥", r"$\leq$": "≤", r"$<$": "<", r"$>$": ">",
         r"$-$": "−", r"$\pm$": "±"}
_COMMAND = re.compile(r"\\(?:emph|textbf|textit|texttt|mbox|text)\{([^{}]*)\}")
_REFERENCE = re.compile(r"(Table|Figure|Section)~\\ref\{[^{}]*\}")
_BARE = re.compile(r"\s*\\(?:ref|label|cite)\{[^{}]*\}")


def latex_text(text: str) -> str:
    """The plain text of a paragraph of report.tex: its escapes undone, the few math symbols it
    writes as characters, emphasis dropped; "Table~\\ref{...}" reads "the table" (the page has no
    numbers to refer to), any other reference is left out."""
    for macro, char in _MATH.items():
        text = text.replace(macro, char)
    text = _BARE.sub("", _REFERENCE.sub(lambda m: f"the {m.group(1).lower()}", text))
    text = _COMMAND.sub(r"\1", text)
    out, i = [], 0
    escapes = sorted(_UNESCAPE, key=len, reverse=True)
    while i < len(text):
        hit = next((e for e in escapes if text.startswith(e, i)), None)
        if hit is not None:
            out.append(_UNESCAPE[hit])
            i += len(hit)
        elif text[i] == "~":
            out.append("\u00a0")
            i += 1
        elif text.startswith("--", i):
            out.append("–")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return re.sub(r"\s+", " ", "".join(out)).strip()


def tex_abstract(tex: str) -> str | None:
    """The abstract of a report.tex's text as plain text; None where it has none."""
    found = re.search(r"\\begin\{abstract\}(.*?)\\end\{abstract\}", tex, re.DOTALL)
    return None if found is None else latex_text(found.group(1))


def tex_section(tex: str, title: str) -> list[str]:
    """The prose paragraphs of a section of a report.tex's text as plain text: the Introduction, Method and
    Limits are worded once, in the LaTeX report, and read back here. Tables, figures and
    \\input lines are left out (the page draws its own)."""
    found = re.search(rf"\\section\{{{re.escape(title)}\}}(.*?)(?=\\section\{{|\\end\{{document\}})",
                      tex, re.DOTALL)
    if found is None:
        return []
    prose = re.sub(r"\\begin\{(table|figure)\*?\}.*?\\end\{\1\*?\}", "", found.group(1), flags=re.DOTALL)
    return [latex_text(part) for part in re.split(r"\n\s*\n", prose) if part.strip() and "\\input" not in part]


# --- tables --------------------------------------------------------------------------------------


def markdown_table(path: Path) -> tuple[list[str], list[list[str]], list[str]]:
    """A table written by style.markdown, read back: its header, its rows, and the lines of
    text written after it (notes: unresolved searches, what was left out)."""
    header: list[str] = []
    rows: list[list[str]] = []
    notes: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("|") and line.endswith("|"):
            if set(line) <= set("|-: "):  # the rule under the header
                continue
            cells = [cell.strip() for cell in line[1:-1].split(" | ")]
            if not header:
                header = cells
            else:
                rows.append(cells)
        elif line.strip():
            notes.append(line.strip())
    return header, rows, notes


def table_html(header: list[str], rows: list[list[str]], caption: str, table_id: str) -> str:
    """A table whose columns sort on a click of their header (SCRIPT)."""
    head = "".join(f'<th scope="col" tabindex="0" title="sort by {escape(name)}">{escape(name)}</th>'
                   for name in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return (f'<div class="scroll"><table class="sortable" id="{table_id}"><caption>{escape(caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def table_block(figures_dir: Path, name: str, caption: str) -> str:
    """figures_dir/NAME.md as a sortable table, with its notes below; empty where not written."""
    path = figures_dir / f"{name}.md"
    if not path.exists():
        return ""
    header, rows, notes = markdown_table(path)
    if not header:
        return paragraphs(notes)
    return table_html(header, rows, caption, f"table-{name}") + paragraphs(notes, "note")


def paragraphs(lines: Iterable[str], css: str = "") -> str:
    attribute = f' class="{css}"' if css else ""
    return "".join(f"<p{attribute}>{escape(line)}</p>" for line in lines)


# --- figures -------------------------------------------------------------------------------------


def image_block(figures_dir: Path, name: str, caption: str) -> str:
    """figures_dir/NAME.png inlined as a base64 image with its caption; empty where not drawn."""
    path = figures_dir / f"{name}.png"
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure id="figure-{name}"><img src="data:image/png;base64,{data}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def rgba(mode: str, alpha: float | None = None) -> str:
    """A sharing mode's colour (style.sharing_mode_colour) as CSS."""
    r, g, b, a = (*sharing_mode_colour(mode), 1.0)[:4]
    return f"rgba({round(255 * r)},{round(255 * g)},{round(255 * b)},{a if alpha is None else alpha:g})"


def _dashes(modes: dict[str, str]) -> dict[str, str]:
    """A line dash per scenario, so that two scenarios of one sharing mode (one colour) differ."""
    seen: dict[str, int] = {}
    out = {}
    for scenario, mode in modes.items():
        out[scenario] = DASHES[seen.get(mode, 0) % len(DASHES)]
        seen[mode] = seen.get(mode, 0) + 1
    return out


def _finite(value: float) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def noisy_neighbour_figure(data: Interference):
    """Each victim's P99 TTFT and TPOT per step of its aggressor's load, one line per scenario in
    its sharing mode's colour, and its value alone (dotted, flat); None without a victim."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    victims = data.steps[data.steps["tenant"] != data.steps["aggressor"]]
    groups = list(victims.groupby(["tenant", "aggressor", "kind"], sort=True))
    if not groups:
        return None
    labels = data.labels()
    modes = dict(zip(data.scores["scenario"], data.scores["sharing_mode"]))
    dashes = _dashes(modes)
    solo = data.comparisons.set_index(["scenario", "tenant", "metric"])["solo"]
    metrics = (METRICS["p99_ttft_ms"], METRICS["p99_tpot_ms"])
    titles = [f"{victim}: {m.label} while {aggressor} steps up its load"
              for victim, aggressor, _ in (key for key, _ in groups) for m in metrics]
    fig = make_subplots(rows=len(groups), cols=2, subplot_titles=titles, horizontal_spacing=0.09,
                        vertical_spacing=0.3 / len(groups))
    shown: set[str] = set()
    for row, ((victim, aggressor, kind), part) in enumerate(groups, start=1):
        axis = f"{aggressor}'s {LEVEL_AXIS.get(kind, kind)}"
        for col, metric in enumerate(metrics, start=1):
            for scenario, line in part.groupby("scenario"):
                line = line.sort_values("level")
                mode = modes.get(scenario, line["sharing_mode"].iloc[0])
                name = labels.get(scenario, scenario)
                fig.add_trace(go.Scatter(
                    x=line["level"].tolist(), y=[_finite(v) for v in line[metric.key]], mode="lines+markers",
                    name=name, legendgroup=scenario, showlegend=scenario not in shown,
                    line={"color": rgba(mode), "dash": dashes.get(scenario, "solid")},
                    hovertemplate=(f"{escape(name)}<br>{escape(axis)}: %{{x:g}}<br>{escape(victim)}'s "
                                   f"{metric.label}: %{{y:,.1f}} {metric.unit}<extra></extra>")), row=row, col=col)
                shown.add(scenario)
                alone = _finite(solo.get((scenario, victim, metric.key), np.nan))
                if alone is not None:
                    ends = [float(line["level"].min()), float(line["level"].max())]
                    fig.add_trace(go.Scatter(
                        x=ends, y=[alone, alone], mode="lines", name=f"{name}: {victim} alone",
                        legendgroup=scenario, showlegend=False,
                        line={"color": rgba(mode), "dash": "dot", "width": 1},
                        hovertemplate=(f"{escape(name)}<br>{escape(victim)} alone: %{{y:,.1f}} {metric.unit}"
                                       "<extra></extra>")), row=row, col=col)
            fig.update_xaxes(title_text=axis, row=row, col=col)
            fig.update_yaxes(title_text=f"{victim}'s {metric.title}", rangemode="tozero", row=row, col=col)
    fig.update_layout(height=380 * len(groups) + 80, template="plotly_white", hovermode="closest",
                      legend={"title": {"text": "sharing mode (dotted: the victim alone)"}},
                      margin={"l": 60, "r": 20, "t": 60, "b": 50})
    return fig


def capacity_figure(data: Capacity):
    """The searched tenant's capacity alone and beside each neighbour level, one line per
    scenario in its sharing mode's colour and named by it; the error bar reaches up to the
    lowest level proven infeasible (the search's bracket); hollow: unresolved; a triangle: no
    level was proven infeasible (at least that). One panel per attainment target and neighbour;
    None where no search has a capacity."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    table = capacity_table(data)
    neighbours = dict(zip(data.rows["beside"], data.rows["neighbours"]))
    drawn = table[table["capacity"].notna()]
    if drawn.empty:
        return None
    panels = sorted({(target, tenant, neighbours.get(beside, "")) for target, tenant, beside in
                     zip(drawn["target"], drawn["tenant"], drawn["beside"]) if beside})
    if not panels:  # alone only
        panels = sorted({(target, tenant, "") for target, tenant in zip(drawn["target"], drawn["tenant"])})
    several = drawn["target"].nunique() > 1
    titles = [f"{tenant}'s capacity" + (f" beside {n}" if n else " alone")
              + (f" (attainment target {target:g})" if several else "") for target, tenant, n in panels]
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=titles, vertical_spacing=0.25 / len(panels))
    modes = dict(zip(table["scenario"], table["sharing_mode"]))
    names = reader_names(table["scenario"], table["sharing_mode"])
    dashes = _dashes(modes)
    shown: set[str] = set()
    for row, (target, tenant, n) in enumerate(panels, start=1):
        part = drawn[(drawn["target"] == target) & (drawn["tenant"] == tenant)
                     & drawn["beside"].map(lambda b: neighbours.get(b, "") in ("", n))]
        settings = sorted(set(part["beside"]) | {""}, key=setting_key)
        ticks = [beside or ALONE for beside in settings]
        for scenario, line in part.groupby("scenario", sort=False):
            line = line.iloc[sorted(range(len(line)), key=lambda i: setting_key(line["beside"].iat[i]))]
            mode = modes[scenario]
            resolved = line["resolved"].astype(bool).tolist()
            open_top = line["first_infeasible"].isna().tolist()
            caps = line["capacity"].astype(float).tolist()
            tops = line["first_infeasible"].astype(float).tolist()
            unit = line["unit"].iloc[0] or ""
            hover = []
            for r in line.itertuples():
                text = (f"≥ {r.capacity:g} {unit} (no level proven infeasible)" if pd.isna(r.first_infeasible)
                        else f"{r.capacity:g} {unit}, infeasible from {r.first_infeasible:g}")
                if pd.notna(r.kept):
                    text += f"<br>kept ×{r.kept:.2f} of its capacity alone"
                text += f"<br>{'resolved' if r.resolved else 'unresolved'}; binds on {r.binding}; {r.probes} probes"
                hover.append(text)
            symbols = [("triangle-up" if top else "circle") + ("" if ok else "-open")
                       for ok, top in zip(resolved, open_top)]
            fig.add_trace(go.Scatter(
                x=[beside or ALONE for beside in line["beside"]], y=caps, mode="lines+markers",
                name=names[scenario],
                legendgroup=scenario, showlegend=scenario not in shown, customdata=hover,
                line={"color": rgba(mode), "dash": dashes[scenario]},
                marker={"color": rgba(mode), "symbol": symbols, "size": 10, "line": {"width": 2, "color": rgba(mode)}},
                error_y={"type": "data", "symmetric": False, "arrayminus": [0] * len(caps),
                         "array": [0 if np.isnan(top) else top - cap for cap, top in zip(caps, tops)],
                         "color": rgba(mode, 0.45), "thickness": 3, "width": 6},
                hovertemplate=f"{escape(scenario)} ({escape(mode)})<br>%{{x}}: %{{customdata}}<extra></extra>"),
                row=row, col=1)
            shown.add(scenario)
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=ticks,
                         title_text=f"beside {n}'s load" if n else "", row=row, col=1)
        units = part["unit"].dropna().unique()
        fig.update_yaxes(title_text=f"{tenant}'s capacity" + (f" ({units[0]})" if len(units) == 1 else ""),
                         rangemode="tozero", row=row, col=1)
    fig.update_layout(height=420 * len(panels) + 60, template="plotly_white", hovermode="closest",
                      legend={"title": {"text": "sharing mode (bar: up to the first infeasible level)"}},
                      margin={"l": 60, "r": 20, "t": 60, "b": 50})
    return fig


def plotly_block(fig, name: str, caption: str) -> str:
    """An interactive figure (its data inline; the page carries plotly.js once)."""
    import plotly.io as pio

    div = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"plotly-{name}",
                      config={"displaylogo": False, "responsive": True})
    return f'<figure class="interactive" id="figure-{name}">{div}<figcaption>{escape(caption)}</figcaption></figure>'


def static_copy(figures_dir: Path, name: str, caption: str) -> str:
    """The PNG of a figure also drawn interactively, folded away under it."""
    block = image_block(figures_dir, name, caption)
    return f"<details><summary>The same figure as in the PDF</summary>{block}</details>" if block else ""


# --- the page ------------------------------------------------------------------------------------

STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:1.5rem 2rem 4rem;color:#1d1d1f;background:#fff}
h1{font-size:1.7rem;margin-bottom:.2rem}h2{margin-top:2.4rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.byline{color:#555;margin-top:0}
#abstract{background:#f4f7fb;border-left:4px solid #3b6fb6;padding:.8rem 1.1rem;font-size:1.02rem}
.scroll{overflow-x:auto;margin:1rem 0}
table{border-collapse:collapse;font-size:.86rem;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;padding:.3rem 0}
th,td{border-bottom:1px solid #e3e3e3;padding:.3rem .6rem;text-align:left;white-space:nowrap}
th{background:#f2f2f2;cursor:pointer;user-select:none;position:sticky;top:0}
th:hover{background:#e6ecf5}th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}
tbody tr:nth-child(even){background:#fafafa}
figure{margin:1.4rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figure img{cursor:zoom-in}figure.full{overflow-x:auto}figure.full img{max-width:none;cursor:zoom-out}
figcaption{color:#444;font-size:.9rem;margin-top:.3rem}
details{margin:.5rem 0 1.5rem}summary{cursor:pointer;color:#3b6fb6}
.note{color:#666;font-size:.86rem;margin:.2rem 0}dl.facts{display:grid;grid-template-columns:max-content 1fr;
gap:.2rem 1rem}dl.facts dt{font-weight:600}dl.facts dd{margin:0}
"""

SCRIPT = """
(function () {
  document.querySelectorAll("figure img").forEach(function (img) {
    img.title = "click: full size";
    img.addEventListener("click", function () { img.parentNode.classList.toggle("full"); });
  });
})();
(function () {
  function key(text) {
    var t = text.trim().replace(/,/g, "");
    if (t === "" || t === "\\u2013" || t === "-") return null;
    var m = /^[<>\\u2265\\u2264\\u00d7~]*\\s*(-?\\d+(?:\\.\\d+)?(?:e[-+]?\\d+)?)/i.exec(t);
    return m ? parseFloat(m[1]) : t.toLowerCase();
  }
  function compare(a, b) {
    if (a === null || b === null) return a === b ? 0 : (a === null ? 1 : -1);
    if (typeof a === typeof b) return a < b ? -1 : (a > b ? 1 : 0);
    return typeof a === "number" ? -1 : 1;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, column) {
      function sort() {
        var down = th.getAttribute("aria-sort") === "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", down ? "descending" : "ascending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows).map(function (row, i) {
          return {row: row, key: key(row.cells[column] ? row.cells[column].textContent : ""), i: i};
        });
        rows.sort(function (a, b) {
          var c = compare(a.key, b.key);
          if (a.key !== null && b.key !== null && down) c = -c;
          return c || a.i - b.i;
        });
        rows.forEach(function (r) { body.appendChild(r.row); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); } });
    });
  });
})();
"""


def _facts(runs: pd.DataFrame) -> str:
    """What the runs were: GPU models, sharing modes, how many scenarios (their names are for
    the tables), workloads, loads."""
    facts = {
        "Runs": f"{len(runs)} complete",
        "GPU": ", ".join(sorted(map(str, runs["gpu_model"].unique()))),
        "Sharing modes": mode_list(runs["sharing_mode"]),
        "Scenarios": f"{runs['scenario'].nunique()}, named in the tables",
        "Workloads": "; ".join(sorted(map(str, runs["workload"].unique()))),
        "Loads": ", ".join(f"{v:g}" for v in sorted(runs["load"].unique())),
    }
    return '<dl class="facts">' + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts.items()) + "</dl>"


def _section(title: str, body: str, section_id: str) -> str:
    return f'<section id="{section_id}"><h2>{escape(title)}</h2>{body}</section>' if body.strip() else ""


def write_html_report(found: RunSet, out: Path, tex_path: Path | None = None) -> Path:
    """out/report.html from the complete runs, beside out/report.tex and the figures that
    `write_report` wrote there; `tex_path` is that report.tex, where it was just written (else
    `write_report` writes it first, so the page never shows figures of other runs)."""
    if tex_path is None:
        tex_path = write_report(found, out)
    figures_dir = tex_path.parent / "figures"
    tex = tex_path.read_text()
    runs = found.complete_runs()
    summary = summarize_runs(runs)
    seen = observations(summary, runs)
    abstract = tex_abstract(tex) or latex_text(seen[0])
    capacity = read_capacity(find_capacity(found.paths))
    interference = read_interference(find_interference(found.paths))
    plans = read_plans(find_plans(found.paths))
    modes = mode_list(runs["sharing_mode"])
    interactive: list[str] = []

    results = _facts(runs) + table_block(figures_dir, "summary", "Measured results per scenario and load (means "
                                         "over repeats); click a header to sort.")
    results += table_block(figures_dir, "cross_gpu", "The same sharing mode, workload and load on each GPU model.")
    results += "".join(image_block(figures_dir, name, latex_text(caption)) for name, caption in FIGURES)

    isolation = ""
    if not capacity.empty:
        isolation += "<h3>Capacity</h3>" + paragraphs(
            ["A tenant's capacity is the highest level of its own load (its request rate on an open loop, its "
             "concurrency on a closed one) at which its SLO attainment was proven to meet the target; kept is the "
             "capacity beside a neighbour over the capacity alone (1: the neighbour cost nothing)."])
        isolation += table_block(figures_dir, CAPACITY_TABLE, "Capacity alone and beside each neighbour setting, per "
                                 "scenario and attainment target; in brackets, kept = beside / alone; *: unresolved.")
        fig = capacity_figure(capacity)
        caption = ("SLO capacity alone and beside each neighbour level, one line per sharing mode: the line joins "
                   "the highest level proven to meet the attainment target; the bar reaches up to the lowest level "
                   "proven not to, the search's bracket. Hover a point for its values.")
        if fig is not None:
            interactive.append(CAPACITY_FIGURE)
            isolation += plotly_block(fig, CAPACITY_FIGURE, caption) + static_copy(figures_dir, CAPACITY_FIGURE,
                                                                                  caption)
        else:
            isolation += image_block(figures_dir, CAPACITY_FIGURE, caption)
        isolation += paragraphs(capacity_sentences(capacity))
    if not interference.empty:
        isolation += "<h3>Solo against shared</h3>" + paragraphs(
            ["Each scenario ran every tenant alone, then all tenants together, for the same window and with the "
             "same requests. Above 1 a latency got worse with neighbours; below 1 a throughput did. A victim's "
             "latency and SLO attainment are given at its aggressor's loaded level where it fared worst."])
        isolation += table_block(figures_dir, "interference_table", "Solo against shared, per scenario and tenant.")
        for name, caption in ISOLATION_FIGURES:
            caption = latex_text(caption)
            fig = noisy_neighbour_figure(interference) if name == NOISY_NEIGHBOUR else None
            if fig is not None:
                interactive.append(name)
                isolation += plotly_block(fig, name, caption + " Hover a point for its values; click a legend "
                                          "entry to hide a scenario.") + static_copy(figures_dir, name, caption)
            else:
                isolation += image_block(figures_dir, name, caption)
        isolation += paragraphs(latex_text(line) for line in isolation_observations(interference))

    plan = ""
    if not plans.empty:
        plan = paragraphs(line for _, doc in plans.docs for line in plan_sentences(doc))
        plan += paragraphs((f"Left out: {why}." for why in plans.left_out), "note")
        plan += table_block(figures_dir, PLAN_TABLE, "The plan's seats: target, capacity, headroom and the proof "
                            "run's attainment (target), per GPU.")
        plan += image_block(figures_dir, PLAN_FIGURE, "Each seat's target as a share of its capacity on its GPU, "
                            "coloured by the GPU's placement; dashed: 1 − margin, the most a seat may take; at the "
                            "right, the attainment its proof run measured against its target.")

    placed = {name for name, _ in [*FIGURES, *ISOLATION_FIGURES]} | {CAPACITY_FIGURE, PLAN_FIGURE}
    others = "".join(image_block(figures_dir, path.stem, path.stem.replace("_", " "))
                     for path in sorted(figures_dir.glob("*.png")) if path.stem not in placed)
    notes = paragraphs(found.notes(), "note")

    plotly_js = ""
    if interactive:
        from plotly.offline import get_plotlyjs

        plotly_js = f"<script>{get_plotlyjs()}</script>"
    body = "".join([
        f"<header><h1>Sharing One GPU Between LLM Servers: {escape(modes)}</h1>"
        f'<p class="byline">Generated by gpushare from {len(runs)} measured runs; the same analysis as '
        f"{escape(tex_path.with_suffix('.pdf').name)}.</p></header>",
        f'<section id="summary"><h2>Abstract</h2><p id="abstract">{escape(abstract)}</p></section>',
        _section("Introduction", paragraphs(tex_section(tex, "Introduction")), "introduction"),
        _section("Method", paragraphs(tex_section(tex, "Method")), "method"),
        _section("Results", results, "results"),
        _section("Isolation", isolation, "isolation"),
        _section("Plan", plan, "plan"),
        _section("Observations", paragraphs(latex_text(line) for line in seen), "observations"),
        _section("Other figures", others, "other-figures"),
        _section("Limits", paragraphs(tex_section(tex, "Limits")), "limits"),
        _section("Left out", notes, "left-out"),
    ])
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>gpushare report: {escape(modes)}</title><style>{STYLE}</style>{plotly_js}</head>"
            f"<body>{body}<script>{SCRIPT}</script>"
            f'<script type="application/json" id="report-facts">{json.dumps({"interactive": interactive})}</script>'
            f"</body></html>\n")
    path = tex_path.parent / HTML_NAME
    path.write_text(page)
    return path
