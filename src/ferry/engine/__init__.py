"""Transfer engine: list -> plan -> copy -> verify."""
