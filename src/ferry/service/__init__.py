"""Service layer: plain functions that the CLI, the API and the console all call."""
