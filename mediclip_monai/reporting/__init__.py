"""The evaluation report: figures, cases.csv and metrics.json."""
