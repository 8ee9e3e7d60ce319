"""Alembic migration environment for Ferry's schema."""
