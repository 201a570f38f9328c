"""Routing: pure functions from scores to a route (twi | text | rejected) with reasons."""
