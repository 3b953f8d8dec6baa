"""Task accuracy of a served model, through its OpenAI-compatible API."""
