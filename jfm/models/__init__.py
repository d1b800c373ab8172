"""Flax NNX networks (batch-first). STUB: to be written (helper C)."""
