"""From run folders to tables, figures (analysis, isolation) and the LaTeX report."""
