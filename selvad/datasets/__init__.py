"""Datasets: watching the roots, validation and its report, manifests, the hash cache, advice."""
