"""`dockyard data …` commands."""

from __future__ import annotations
