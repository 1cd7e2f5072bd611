"""Experiments: one run, in stages (run/), a matrix of scenarios x load levels planned and run cell by
cell (matrix), and the interference protocol's solo and shared phases."""
