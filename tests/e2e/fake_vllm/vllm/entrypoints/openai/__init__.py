"""A stand-in for vLLM whose engine dies at the first request (tests/e2e/test_gates.py)."""
