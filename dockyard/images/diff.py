"""What changed from one image to another: versions, kernels, pip and R packages, as
their inspections found them."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.orm import Session

from dockyard.images.catalog import VERSION_KEYS, visible_image


def image_diff(session: Session, from_id: int, to_id: int, *, admin: bool) -> dict[str, Any]:
    """The changes from image ``from_id`` to ``to_id`` (both visible to the caller), with
    their references as ``from_image`` and ``to_image``."""
    old = visible_image(session, from_id, admin=admin)
    new = visible_image(session, to_id, admin=admin)
    changes = diff_contents(old.contents or {}, new.contents or {})
    return {"from_image": old.reference, "to_image": new.reference, **changes}


def _normalize_package(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _diff_packages(old: dict[str, str], new: dict[str, str], *, pip: bool) -> dict[str, Any]:
    key = _normalize_package if pip else (lambda name: name)
    old_by = {key(name): (name, version) for name, version in (old or {}).items()}
    new_by = {key(name): (name, version) for name, version in (new or {}).items()}
    added = [
        {"name": new_by[k][0], "version": new_by[k][1]} for k in sorted(new_by.keys() - old_by)
    ]
    removed = [
        {"name": old_by[k][0], "version": old_by[k][1]} for k in sorted(old_by.keys() - new_by)
    ]
    changed = [
        {"name": new_by[k][0], "old": old_by[k][1], "new": new_by[k][1]}
        for k in sorted(old_by.keys() & new_by.keys())
        if old_by[k][1] != new_by[k][1]
    ]
    unchanged = len(old_by.keys() & new_by.keys()) - len(changed)
    return {"added": added, "removed": removed, "changed": changed, "unchanged": unchanged}


def diff_contents(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What changed from ``old`` to ``new``: versions, kernels, pip and R packages."""
    old = old or {}
    new = new or {}
    versions = [
        {"name": key, "old": old.get(key), "new": new.get(key)}
        for key in VERSION_KEYS
        if old.get(key) != new.get(key)
    ]
    old_kernels = set((old.get("kernels") or {}).keys())
    new_kernels = set((new.get("kernels") or {}).keys())
    return {
        "versions": versions,
        "kernels": {
            "added": sorted(new_kernels - old_kernels),
            "removed": sorted(old_kernels - new_kernels),
        },
        "pip_packages": _diff_packages(old.get("pip_packages"), new.get("pip_packages"), pip=True),
        "r_packages": _diff_packages(old.get("r_packages"), new.get("r_packages"), pip=False),
    }
