"""Table schemas: recorded from the first batch, enforced on every later one.

A schema is stored as a list of ``{"name", "type", "nullable"}`` with Arrow's type
names, so that it reads the same from Python, R and the API. Two types are the same
"family" when pandas versions or writers could pick either for the same data
(``string``/``large_string``, timestamp units); anything else is a change.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dockyard.data.errors import SchemaMismatch

SchemaFields = list[dict[str, Any]]

_TIMESTAMP = re.compile(r"timestamp\[(?:s|ms|us|ns)(?:, tz=([^\]]+))?\]")
_TIME = re.compile(r"time(?:32|64)\[(?:s|ms|us|ns)\]")
_DURATION = re.compile(r"duration\[(?:s|ms|us|ns)\]")
_DICTIONARY = re.compile(r"dictionary<values=(.+?), indices=[a-z0-9]+, ordered=\d>")


def fields_from_arrow(schema: Any) -> SchemaFields:
    """Fields of a ``pyarrow.Schema`` (the pandas metadata is not part of it)."""
    return [{"name": f.name, "type": str(f.type), "nullable": bool(f.nullable)} for f in schema]


def type_family(type_name: str) -> str:
    name = _DICTIONARY.sub(r"\1", type_name)
    name = _TIMESTAMP.sub(lambda m: f"timestamp[tz={m.group(1) or ''}]", name)
    name = _TIME.sub("time", name)
    name = _DURATION.sub("duration", name)
    for large, plain in (("large_string", "string"), ("string_view", "string"),
                         ("large_binary", "binary"), ("binary_view", "binary"),
                         ("large_list<", "list<"), ("list_view<", "list<")):
        name = name.replace(large, plain)
    return name


@dataclass
class SchemaCheck:
    """The outcome of comparing a batch's fields with the table's recorded ones."""

    schema: SchemaFields
    changed: bool
    problems: list[dict[str, str]] = field(default_factory=list)


def check_schema(recorded: Sequence[dict[str, Any]], given: Sequence[dict[str, Any]],
                 *, evolve: bool) -> SchemaCheck:
    """Compare; the returned ``schema`` is what the table records after this batch."""
    if not recorded:
        return SchemaCheck(schema=[dict(f) for f in given], changed=True)
    by_name = {f["name"]: f for f in given}
    problems: list[dict[str, str]] = []
    merged: SchemaFields = []
    changed = False
    for old in recorded:
        new = by_name.get(old["name"])
        if new is None:
            problems.append({"column": old["name"], "problem": "missing"})
            merged.append(dict(old))
            continue
        if old["type"] == "null" and new["type"] != "null":
            # The first writer only had nulls here; the first real type decides.
            merged.append({**old, "type": new["type"]})
            changed = True
            continue
        if new["type"] != "null" and type_family(old["type"]) != type_family(new["type"]):
            problems.append({"column": old["name"],
                             "problem": f"type {new['type']}, the table has {old['type']}"})
        merged.append(dict(old))
    known = {f["name"] for f in recorded}
    for new in given:
        if new["name"] in known:
            continue
        if not evolve:
            problems.append({"column": new["name"],
                             "problem": "new column (pass evolve=True to add nullable columns)"})
        elif not new.get("nullable", True):
            problems.append({"column": new["name"],
                             "problem": "new column is not nullable (older batches have no "
                                        "values for it)"})
        else:
            merged.append(dict(new))
            changed = True
    return SchemaCheck(schema=merged, changed=changed, problems=problems)


def enforce_schema(table_label: str, recorded: Sequence[dict[str, Any]],
                   given: Sequence[dict[str, Any]], *, evolve: bool) -> SchemaCheck:
    result = check_schema(recorded, given, evolve=evolve)
    if result.problems:
        listed = "; ".join(f"column '{p['column']}': {p['problem']}" for p in result.problems)
        raise SchemaMismatch(f"The data does not match the schema of {table_label}: {listed}",
                             result.problems)
    return result
