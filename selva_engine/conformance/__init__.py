"""Conformance: the golden runners that check this implementation against reference outputs.

Run as `python -m selva_engine.conformance ../shared/golden`. Nothing in production code
imports this package.
"""
