"""Generating audio: sampling latents with an adapter at a strength, and the Synthesizer."""
