"""Metrics, health, profiling and logs."""
