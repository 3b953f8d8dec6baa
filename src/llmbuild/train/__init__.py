"""Pretraining and SFT on megatron-core."""
