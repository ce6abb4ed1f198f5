"""Rejoin benchmarks against the raw engines (Temporal, HTTP clients): `python -m bench`."""
