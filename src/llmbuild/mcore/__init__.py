"""megatron-core on a selectable device: the device adaptor, the model, checkpoints."""
