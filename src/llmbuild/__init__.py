"""llmbuild: a reproducible build graph for the lifecycle of a large language model."""

__version__ = "0.1.0"
