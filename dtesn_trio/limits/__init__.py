"""Admission: rate limiting, adaptive concurrency, circuit breaking."""
