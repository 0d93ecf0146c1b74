"""Training utilities for jspatial (data loading, training loops)."""
