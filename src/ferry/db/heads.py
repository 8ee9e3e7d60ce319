"""The Alembic heads, read from the revision files themselves: neither Alembic nor SQLAlchemy is imported."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"


@cache
def heads() -> frozenset[str]:
    """The newest revision of every Alembic branch."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        rev = re.search(r"^revision\s*=\s*[\"']([^\"']+)", source, re.M)
        if rev:
            revisions.add(rev.group(1))
        down = re.search(r"^down_revision\s*=\s*(.+)$", source, re.M)
        if down:
            parents.update(re.findall(r"[\"']([^\"']+)[\"']", down.group(1)))
    return frozenset(revisions - parents)
