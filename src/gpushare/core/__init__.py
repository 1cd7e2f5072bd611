"""The ground floor: what every other part of gpushare may use, importing nothing of it.

Request records, a run's events, process primitives, the run folder's file names and the
atomic writer.
"""
