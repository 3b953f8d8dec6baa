"""Datasets: the synthetic default, readers for real formats, and tokenization into shards."""
