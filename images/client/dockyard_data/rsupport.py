"""Helpers for the R client, which uses this package through reticulate when R's
'arrow' package is not installed.

A pandas frame is handed to R as plain Python lists, one per column, with a list of
missing-value flags: reticulate turns homogeneous lists into R vectors on every version,
whereas its conversion of numpy arrays and whole DataFrames depends on the numpy and
pandas versions (older reticulate cannot read numpy 2 arrays; pandas 3 renamed the
DataFrame class reticulate dispatches on).
"""

from __future__ import annotations

import math
from typing import Any


def frame_for_r(df: Any) -> dict[str, Any]:
    """``{"names": [...], "columns": [{"kind", "values", "na"}]}`` where kind is double,
    integer, logical, character or datetime (seconds since the epoch, UTC)."""
    import pandas as pd

    columns = []
    for name in df.columns:
        column = df[name]
        na = [bool(v) for v in column.isna().tolist()]
        dtype = column.dtype
        if pd.api.types.is_bool_dtype(dtype):
            kind, values = "logical", [bool(v) for v in column.fillna(False).tolist()]
        elif pd.api.types.is_integer_dtype(dtype):
            values = [int(v) for v in column.fillna(0).tolist()]
            small = all(-(2**31) < v < 2**31 for v in values)
            kind = "integer" if small else "double"
            values = values if small else [float(v) for v in values]
        elif pd.api.types.is_float_dtype(dtype):
            kind = "double"
            values = [math.nan if missing else float(v)
                      for v, missing in zip(column.tolist(), na)]
        elif pd.api.types.is_datetime64_any_dtype(dtype):
            utc = (column.dt.tz_convert("UTC").dt.tz_localize(None)
                   if getattr(dtype, "tz", None) else column)
            nanos = utc.astype("datetime64[ns]").astype("int64").tolist()
            kind = "datetime"
            values = [0.0 if missing else n / 1e9 for n, missing in zip(nanos, na)]
        else:
            kind = "character"
            values = ["" if missing else str(v) for v, missing in zip(column.tolist(), na)]
        columns.append({"kind": kind, "values": values, "na": na})
    return {"names": [str(n) for n in df.columns], "columns": columns}


def frame_from_r(spec: dict[str, Any]) -> Any:
    """The inverse of frame_for_r(), for dy_writer(): kinds double, integer, logical,
    character, datetime (seconds since the epoch, UTC) and date (days since the epoch)."""
    import pandas as pd

    data = {}
    for name, column in zip(spec["names"], spec["columns"]):
        kind, values = column["kind"], list(column["values"])
        na = [bool(v) for v in column["na"]]
        if kind == "integer":
            series = pd.array([None if m else int(v) for v, m in zip(values, na)], dtype="Int64")
            if not any(na):
                series = pd.array(series, dtype="int64")
        elif kind == "double":
            series = pd.array([math.nan if m else float(v) for v, m in zip(values, na)],
                              dtype="float64")
        elif kind == "logical":
            series = pd.array([None if m else bool(v) for v, m in zip(values, na)],
                              dtype="boolean" if any(na) else "bool")
        elif kind == "datetime":
            series = pd.to_datetime([None if m else float(v) for v, m in zip(values, na)],
                                    unit="s", utc=True)
        elif kind == "date":
            stamps = pd.to_datetime([None if m else float(v) for v, m in zip(values, na)],
                                    unit="D")
            series = pd.array([None if m else s.date() for s, m in zip(stamps, na)],
                              dtype=object)
        else:
            series = pd.array([None if m else str(v) for v, m in zip(values, na)],
                              dtype=object)
        data[str(name)] = series
    return pd.DataFrame(data)
