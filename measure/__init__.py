"""Measuring: ``metrics`` (``evaluate``: consistency, pose fidelity, the toy world's measures),
``sweep`` (a grid of runs), ``report`` (the HTML report and the trade-off picture)."""
