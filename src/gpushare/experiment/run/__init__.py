"""One run, in stages: preflight, the run folder, the scenario's servers, the tenants' loads,
the watch over the servers, the summary, the console, and the run that strings them together
(`run.run_scenario`)."""
