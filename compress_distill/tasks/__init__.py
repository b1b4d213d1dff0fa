"""Prefect tasks: thin wrappers that look up the store, run or submit, and return a reference."""
