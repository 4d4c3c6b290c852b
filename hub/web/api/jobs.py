"""REST API: jobs."""

from __future__ import annotations
