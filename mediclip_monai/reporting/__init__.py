"""The reports: of an evaluation (``report``: metrics.json, cases.csv, the figures of ``figures``) and of one
inferred case (``case_report``: JSON and a one-page PDF)."""
