"""Trajectory format adapters: each turns one input record into the canonical sample."""
