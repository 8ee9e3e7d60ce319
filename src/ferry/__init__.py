"""Ferry: self-hosted object storage migration and sync service."""

__version__ = "0.1.0"
