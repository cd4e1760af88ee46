"""Runs: the persistent queue, the worker and its child process, run directories, sweeps,
periodic jobs and retention."""
