"""Gates: each stage proves its output before anything downstream uses it.

A gate writes a small JSON verdict (``verdict.py``) with its provenance beside it; a failed
gate exits non-zero with one line naming the subject, the figure and the threshold, so the
graph stops loudly instead of building on a broken artifact.
"""
