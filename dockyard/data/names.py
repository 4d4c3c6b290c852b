"""Names that become paths: namespaces, tables, partition keys and values.

They are checked strictly because they end up in directory names on local disks and
object stores, in Spark and Hive paths, and in R and Python code; anything that could
climb out of the table's directory or mean something to a path parser is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from dockyard.data.errors import InvalidName

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_KEY = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
_VALUE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
MANIFEST_NAME = "_dockyard_manifest.json"


def check_name(field: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidName(
            field,
            f"{value!r} is not a usable name: use 1-64 lower-case letters, digits, '_' or '-', "
            "starting with a letter or digit",
        )
    return value


def partition_value(key: str, value: Any) -> str:
    """The string form of a partition value as it appears in paths (ints are accepted)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidName(f"partition.{key}", "a partition value is a string or an integer")
    text = str(value)
    if not _VALUE.match(text):
        raise InvalidName(
            f"partition.{key}",
            f"{text!r} cannot be a partition value: use up to 128 letters, digits, '.', '_' "
            "or '-', not starting with '.'",
        )
    return text


def check_partition_keys(keys: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    for key in keys:
        if not isinstance(key, str) or not _KEY.match(key):
            raise InvalidName(
                "partition_keys",
                f"{key!r} cannot be a partition key: use a lower-case column name "
                "(letters, digits, '_')",
            )
        if key in seen:
            raise InvalidName("partition_keys", f"{key!r} is given twice")
        seen.add(key)
    return list(keys)


def partition_values(keys: Sequence[str], given: Mapping[str, Any]) -> dict[str, str]:
    """Check a full partition spec against the table's keys; values in key order."""
    missing = [k for k in keys if k not in given]
    unknown = [k for k in given if k not in keys]
    if missing or unknown:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(repr(k) for k in missing))
        if unknown:
            parts.append("unknown " + ", ".join(repr(k) for k in unknown))
        expected = ", ".join(keys) if keys else "none (the table is not partitioned)"
        raise InvalidName("partition", f"{'; '.join(parts)}; the table's partition keys are: "
                          f"{expected}")
    return {k: partition_value(k, given[k]) for k in keys}


def partition_filter(keys: Sequence[str], given: Mapping[str, Any]) -> dict[str, str]:
    """A possibly partial partition spec, used to select partitions when reading."""
    unknown = [k for k in given if k not in keys]
    if unknown:
        raise InvalidName("partitions", f"unknown partition key {unknown[0]!r}; the table's "
                          f"keys are: {', '.join(keys) or 'none'}")
    return {k: partition_value(k, given[k]) for k in keys if k in given}


def canonical(values: Mapping[str, str]) -> str:
    """``key=value/key=value`` in the table's key order; "" when not partitioned."""
    return "/".join(f"{k}={v}" for k, v in values.items())


def parse_canonical(keys: Sequence[str], text: str) -> dict[str, str]:
    """The inverse of canonical(), for partitions named in URLs."""
    given: dict[str, str] = {}
    if text:
        for part in text.split("/"):
            key, sep, value = part.partition("=")
            if not sep:
                raise InvalidName("partition", f"{part!r} is not key=value; write partitions "
                                  "as key=value/key=value")
            given[key] = value
    return partition_values(keys, given)
