"""Report of a study: ``summary.json`` from the run directories, figures (matplotlib) and ``report.md``."""
