"""Every summary.json metric, declared once: key, label, unit, definition, and its names in
vLLM's `bench serve --save-result` and NVIDIA AIPerf (as AIPerf declares each of its metrics).

Everything else follows from this catalogue: `flat()` writes its keys in this order,
analysis takes its table columns and axis labels from it, and the table of keys in
docs/metrics.md is generated from it (scripts/gen_metrics_doc.py; a test keeps it in step).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Mapping

from .summary import LENGTH_PERCENTILES, PERCENTILES, LatencyStats, RunSummary

Where = Literal["summary", "slo", "run", "gpu"]
"""Who writes a key. "summary": flat(), at the top level and in each per_endpoint
block; "slo": the same, but only when the run has SLOs; "run": the runner, at the top level
only; "gpu": metrics.gpu_window, in the `gpu` block."""


@dataclass(frozen=True)
class MetricSpec:
    """One key of summary.json and what it means."""

    key: str
    label: str
    unit: str | None
    description: str
    """How it is computed, in one sentence."""
    higher_is_better: bool | None = None
    """Which way is better: True for a throughput, False for a latency; None where neither is
    (a count, a length, a duration)."""
    vllm: str | None = None
    """The same quantity's key in `vllm bench serve --save-result`."""
    aiperf: str | None = None
    """The matching AIPerf metric's tag."""
    where: Where = "summary"
    table: int | None = None
    """Decimals in analysis's summary table; None: not a column there."""
    family: str | None = None
    """The one declaration that generated this key and its siblings: one row in the docs."""
    value: Callable[[RunSummary], Any] | None = field(default=None, compare=False, repr=False)
    """How flat() reads it from a RunSummary; None: the attribute named `key`."""
    type: Any = field(default=float, compare=False, repr=False)
    """Its value's type in summary.json (None aside: not measured), for gpushare.measure.results' models."""

    @property
    def title(self) -> str:
        """Label with unit, for table headers and axes."""
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def read(self, summary: RunSummary) -> Any:
        return self.value(summary) if self.value else getattr(summary, self.key)


_STAT_LABELS = {"mean": "Mean", "median": "Median", "std": "Std. dev.", "max": "Max"}
LATENCY_STATS = ("mean", "median", "std", *(f"p{q}" for q in PERCENTILES))


def _stat(stats: LatencyStats, stat: str) -> float | None:
    """A statistic by the name its keys use: mean, median, std or pN."""
    return stats.p[int(stat[1:])] if stat.startswith("p") else getattr(stats, stat)


def _family(pattern: str, stats: tuple[str, ...], label: str, unit: str, description: str,
            read: Callable[[RunSummary, str], Any], *, higher_is_better: bool | None = None, vllm: bool = False,
            aiperf: str | None = None, table: Mapping[str, int] | None = None) -> tuple[MetricSpec, ...]:
    """One declaration, one key per statistic: `pattern` with the statistic in place of {}."""
    return tuple(
        MetricSpec(pattern.format(stat), f"{_STAT_LABELS.get(stat, stat.upper())} {label}", unit, description,
                   higher_is_better, vllm=pattern.format(stat) if vllm else None, aiperf=aiperf,
                   table=(table or {}).get(stat), family=pattern, value=lambda s, stat=stat: read(s, stat))
        for stat in stats)


def _latency(name: str, label: str, description: str, aiperf: str,
             table: Mapping[str, int] | None = None) -> tuple[MetricSpec, ...]:
    """A per-request latency over completed requests, in ms, with vLLM's key names."""
    return _family(f"{{}}_{name}_ms", LATENCY_STATS, label, "ms", description,
                   lambda s, stat: _stat(s.latencies[name], stat), higher_is_better=False, vllm=True, aiperf=aiperf,
                   table=table)


def _lengths(side: str, label: str, aiperf: str) -> tuple[MetricSpec, ...]:
    """Percentiles and maximum of one side's token lengths, as metrics.token_lengths names them."""
    pattern = f"{side}_tokens_{{}}"
    family = _family(pattern, (*(f"p{q}" for q in LENGTH_PERCENTILES), "max"), label, "tokens",
                     f"{label.capitalize()}s (the server's usage) of completed requests: the mix actually sent.",
                     lambda s, stat: s.lengths[pattern.format(stat)], aiperf=aiperf)
    return tuple(replace(m, type=int) if m.key.endswith("_max") else m for m in family)  # percentiles interpolate


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


CATALOGUE: tuple[MetricSpec, ...] = (
    MetricSpec("completed", "Completed", "requests", "Measured requests with status `ok`.",
               vllm="completed", aiperf="request_count", type=int),
    MetricSpec("failed", "Failed", "requests", "Measured requests that failed, whatever the reason.", False,
               vllm="failed", aiperf="error_request_count", table=0, type=int),
    MetricSpec("failed_by_kind", "Failed by kind", "requests", "`failed` by status (`timeout`, `http_error`, …).",
               value=lambda s: dict(s.failed_by_kind), type=dict[str, int]),
    MetricSpec("duration", "Duration", "s", "First `sent` to last `end` over measured requests "
               "(vLLM measures from the benchmark's start instead).", vllm="duration", aiperf="benchmark_duration"),
    MetricSpec("total_input_tokens", "Total input", "tokens",
               "Sum of usage's `prompt_tokens` over completed requests.", vllm="total_input_tokens", aiperf="total_isl",
               type=int),
    MetricSpec("total_output_tokens", "Total output", "tokens",
               "Sum of usage's `completion_tokens` over completed requests.", vllm="total_output_tokens",
               aiperf="total_osl", type=int),
    MetricSpec("request_throughput", "Request throughput", "req/s", "`completed / duration`.", True,
               vllm="request_throughput", aiperf="request_throughput"),
    MetricSpec("output_throughput", "Output throughput", "tokens/s", "`total_output_tokens / duration`.", True,
               vllm="output_throughput", aiperf="output_token_throughput", table=0),
    MetricSpec("total_token_throughput", "Total token throughput", "tokens/s",
               "`(total_input_tokens + total_output_tokens) / duration`.", True, vllm="total_token_throughput",
               aiperf="total_token_throughput"),
    *_latency("ttft", "TTFT", "Time to first token, `first_token − sent`, over completed requests.",
              "time_to_first_token", table={"p99": 0}),
    *_latency("tpot", "TPOT", "Time per output token after the first, `(e2el − ttft) / (output_tokens − 1)`, "
              "over completed requests with at least 2 output tokens.", "inter_token_latency", table={"p99": 1}),
    *_latency("itl", "ITL", "Gaps between token-carrying blocks, each spread evenly over its tokens, "
              "over all of the completed requests' gaps.", "inter_chunk_latency"),
    *_latency("e2el", "E2E latency", "End-to-end latency, `end − sent`, over completed requests.", "request_latency"),
    *_family("{}_latency_s", tuple(f"p{q}" for q in PERCENTILES), "E2E latency", "s",
             "E2E latency percentiles in seconds (the original gpushare tables' unit).",
             lambda s, stat: _seconds(_stat(s.latencies["e2el"], stat)), higher_is_better=False,
             aiperf="request_latency", table={"p99": 2}),
    *_family("{}_queue_ms", ("mean", "p99"), "client queue time", "ms",
             "`sent − scheduled` over all measured requests: how late the client sent them.",
             lambda s, stat: _stat(s.queue, stat), higher_is_better=False),
    MetricSpec("good_requests", "Good requests", "requests",
               "Measured requests that completed within every SLO (see below).", True,
               aiperf="good_request_count", where="slo", type=int),
    MetricSpec("request_goodput", "Request goodput", "req/s", "`good_requests / duration`.", True,
               vllm="request_goodput", aiperf="goodput", where="slo"),
    MetricSpec("good_request_fraction", "SLO attainment", None,
               "`good_requests` over all measured requests, failed ones included.", True,
               aiperf="good_request_fraction", where="slo"),
    MetricSpec("slo_misses", "SLO misses", "requests",
               "Per SLO bound, the completed measured requests that missed it (failed requests, which miss "
               "every bound, are `failed`); the bound missed most is the one that binds.", where="slo",
               type=dict[str, int]),
    MetricSpec("usage_missing", "Usage missing", "requests",
               "Completed requests whose server sent no usage, so their output tokens were counted with the "
               "tokenizer.", type=int),
    MetricSpec("usage_disagrees", "Usage disagrees", "requests",
               "Completed streamed requests whose usage `completion_tokens` differs from the token events "
               "streamed (`streamed_tokens` in requests.csv); their output tokens are usage's.", type=int),
    *_lengths("input", "prompt length", "input_sequence_length"),
    *_lengths("output", "output length", "output_sequence_length"),
    MetricSpec("client_cpu_s", "Client CPU", "s",
               "CPU time the gpushare process used during the measured window: the client's own overhead, "
               "reported as AIPerf does.",
               where="run"),
    MetricSpec("client_cpu_ms_per_request", "Client CPU per request", "ms",
               "`client_cpu_s` per measured request.", False, where="run"),
    MetricSpec("requests_built_in_window", "Requests built in window", "requests",
               "Measured requests whose prompt and body were built inside the measured window (see below).",
               where="run", type=int),
    MetricSpec("gpu_samples", "GPU samples", None, "Rows of gpu.csv (whole GPUs) inside the measured window.",
               where="gpu", type=int),
    MetricSpec("energy_j", "GPU energy", "J", "NVML's total-energy counter, last sample minus first in the window, "
               "summed over GPUs.", aiperf="nvidia_total_gpu_energy", where="gpu"),
    MetricSpec("energy_per_output_token_j", "Energy per output token", "J/token",
               "`energy_j / total_output_tokens`.", False, aiperf="nvidia_energy_per_output_token",
               where="gpu", table=3),
    MetricSpec("avg_power_w", "Average power", "W", "`energy_j` over the span of the samples "
               "(`mean_power_w` where the energy counter is missing).", aiperf="nvidia_average_gpu_power",
               where="gpu"),
    MetricSpec("mean_power_w", "Mean power", "W", "Mean of the power samples in the window.", where="gpu"),
    MetricSpec("max_power_w", "Max power", "W", "Largest power sample in the window.", where="gpu"),
    MetricSpec("mean_gpu_util_pct", "Mean GPU utilisation", "%",
               "Mean of NVML's utilisation samples (time a kernel ran) in the window.", where="gpu"),
    MetricSpec("max_gpu_util_pct", "Max GPU utilisation", "%", "Largest utilisation sample in the window.",
               where="gpu"),
    MetricSpec("max_mem_used_mib", "Max memory used", "MiB", "Largest device memory in use in the window.",
               where="gpu"),
    MetricSpec("peak_server_memory_mib", "Peak server memory", "MiB",
               "Per server, the most GPU memory its process group held in the window.", where="gpu",
               type=dict[str, float | None]),
)

METRICS: dict[str, MetricSpec] = {m.key: m for m in CATALOGUE}


def flat(summary: RunSummary) -> dict[str, Any]:
    """The summary as vLLM-named keys (plus ours), ready for summary.json: the catalogue's keys
    that a RunSummary gives, in its order; the SLO keys only where the run had SLOs."""
    return {m.key: m.read(summary) for m in CATALOGUE
            if m.where == "summary" or (m.where == "slo" and summary.good_requests is not None)}


# --- docs/metrics.md ----------------------------------------------------------------------------

BEGIN, END = "<!-- generated: metrics table -->", "<!-- end generated -->"
_NOTES = {"slo": " Only with SLOs.", "run": " Top level only, not per endpoint."}


def _cells(m: MetricSpec) -> tuple[str, ...]:
    vllm = "same" if m.vllm == m.key else f"`{m.vllm}`" if m.vllm else "—"
    better = "—" if m.higher_is_better is None else "higher" if m.higher_is_better else "lower"
    return (f"`{'gpu.' if m.where == 'gpu' else ''}{m.key}`", m.unit or "—", better,
            m.description + _NOTES.get(m.where, ""), vllm, f"`{m.aiperf}`" if m.aiperf else "—")


def markdown_table() -> str:
    """The catalogue as a Markdown table, one row per declaration (a family's keys share one)."""
    lines = ["| Key | Unit | Better | Definition | vLLM `bench serve` | AIPerf |", "|---|---|---|---|---|---|"]
    for _, group in itertools.groupby(CATALOGUE, key=lambda m: m.family or m.key):
        columns = zip(*map(_cells, group))
        lines.append("| " + " | ".join(", ".join(dict.fromkeys(column)) for column in columns) + " |")
    return "\n".join(lines) + "\n"


def with_generated_table(doc: str) -> str:
    """`doc` with the text between the markers replaced by markdown_table(); the rest is kept."""
    head, found, rest = doc.partition(BEGIN + "\n")
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise ValueError(f"docs/metrics.md: no {BEGIN} … {END} block")
    return head + BEGIN + "\n" + markdown_table() + END + tail
