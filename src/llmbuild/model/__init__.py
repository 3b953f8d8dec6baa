"""Models the graph makes itself: the tiny default."""
