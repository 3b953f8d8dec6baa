"""Per-stage environments: a pinned spec (envs/<stack>.txt) -> a venv (.envs/<stack>/)."""
