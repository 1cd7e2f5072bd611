"""What a run measured: each metric declared once (metric_catalog), computed from request
records (metrics) into typed summaries (summary), the GPU sampled through NVML (monitor),
interference scores, and the run folder's files read and written as typed models (results)."""
