"""Evaluation: metrics, the CAD judge, figures, benchmarks and reports."""
