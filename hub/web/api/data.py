"""REST API: data."""

from __future__ import annotations
