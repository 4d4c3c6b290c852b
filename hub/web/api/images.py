"""REST API: images."""

from __future__ import annotations
