"""Benchmark clients for an OpenAI-compatible service: records, metrics, static runs."""
