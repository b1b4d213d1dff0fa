"""Prefect flows: orchestration only. Logic lives in the core modules."""
