"""Evaluation: spectral metrics, the checkpoint recommendation, the evaluator, sweep summaries."""
