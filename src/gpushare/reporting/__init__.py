"""From run folders to tables, figures (analysis, isolation; both drawn in one style) and the LaTeX report."""
