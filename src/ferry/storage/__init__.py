"""Storage layer: one Backend protocol and its implementations."""
