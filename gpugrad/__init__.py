"""gpugrad (engine being written)."""
