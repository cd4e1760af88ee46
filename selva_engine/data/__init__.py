"""Datasets on disk (clip pairs, prompts.txt, features) and their encoded form (the extraction cache)."""
