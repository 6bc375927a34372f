"""Result records (the engine's dicts and `engine.ResultColumns`) as rows of the results table, and
the check of a record from outside the engine (the cache) against ``RESULT_SCHEMA``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa

from pipeline.core.errors import InputError
from pipeline.store.schemas import (
    PARAM_COLUMNS,
    REQUIRED_FIELDS,
    RESULT_NAME_SET,
    RESULT_NAMES,
    RESULT_SCHEMA,
    RUN_PARAMETER_FIELDS,
    TIMESTAMP_FIELDS,
)
from pipeline.store.values import (
    canonical_params,
    parse_iso,
    parse_ts,
    plain,
)


def columns_table(columns: Any, run_id: str, created: datetime, schema: pa.Schema) -> pa.Table:
    """The results-table rows of an `engine.ResultColumns`: the same values `result_row` gives
    each of its results as a record (tests/test_overfit.py compares them)."""
    n = columns.n_rows
    by_set = [(params, execution.fields()) for params, execution in columns.config.sets]

    def per_set(values: list[Any], kind: pa.DataType) -> pa.Array:
        return pa.array(values, type=kind).take(pa.array(columns.set_index))

    def constant(value: Any, kind: pa.DataType) -> pa.Array:
        return pa.nulls(n, kind) if value is None else pa.repeat(pa.scalar(value, kind), n)

    arrays: dict[str, pa.Array] = {}
    for field in schema:
        name, kind = field.name, field.type
        if name == "run_id":
            arrays[name] = constant(run_id, kind)
        elif name == "created_at":
            arrays[name] = constant(created, kind)
        elif name == "params_json":
            arrays[name] = per_set([canonical_params(params) for params, _ in by_set], kind)
        elif name in columns.per_symbol:
            arrays[name] = pa.array(columns.per_symbol[name], type=kind).take(pa.array(columns.symbol_index))
        elif name in columns.fields:
            values = columns.fields[name]
            if values.dtype.kind == "M":
                arrays[name] = pa.array(values, from_pandas=True).cast(kind)
            elif values.dtype.kind == "O":
                arrays[name] = pa.array(values, type=kind, from_pandas=True)
            else:
                arrays[name] = pa.array(values, from_pandas=True).cast(kind)
        elif name in columns.constants:
            value = columns.constants[name]
            arrays[name] = constant(parse_ts(value, name) if name in TIMESTAMP_FIELDS else value, kind)
        elif name == "mode":
            arrays[name] = constant("single", kind)
        elif name in RUN_PARAMETER_FIELDS:
            arrays[name] = per_set([fields[name] for _, fields in by_set], kind)
        elif name not in RESULT_NAME_SET or name in PARAM_COLUMNS:
            # A parameter's own column: its value where the set has it (numbers only, as result_row).
            arrays[name] = per_set([float(params[name]) if isinstance(params.get(name), int | float)
                                    and not isinstance(params.get(name), bool) else None
                                    for params, _ in by_set], kind)
        else:
            arrays[name] = pa.nulls(n, kind)
    return pa.Table.from_arrays(list(arrays.values()), schema=schema)


def result_row(record: Mapping[str, Any], run_id: str, created: datetime) -> dict[str, Any]:
    missing = [name for name in REQUIRED_FIELDS if record.get(name) is None]
    if missing:
        raise InputError(f"result record lacks {', '.join(missing)}: {dict(record)!r:.200}")
    params = record["params"]
    if not isinstance(params, Mapping):
        raise InputError(f"result params must be a mapping, got {params!r}")
    row: dict[str, Any] = {
        name: plain(record.get(name)) for name in RESULT_NAMES if name in record
    }
    for name in TIMESTAMP_FIELDS:
        row[name] = parse_ts(record.get(name), name)
    row.update(
        run_id=run_id,
        created_at=created,
        params_json=canonical_params(params),
        from_cache=bool(record.get("from_cache", False)),
        mode=record.get("mode", "single"),
    )
    if "symbols" in record:
        row["n_symbols"] = len(record["symbols"])
    # Parameters a strategy does not have stay null. A user strategy's own parameters get
    # columns of their own (see param_fields); a name that is already a column lives in
    # params_json only.
    for name in PARAM_COLUMNS:
        value = params.get(name)
        row[name] = None if value is None else float(value)
    for name, value in params.items():
        if name not in RESULT_NAME_SET and isinstance(value, int | float):
            row[name] = float(value)
    return row


def _kind(kind: pa.DataType) -> str:
    if pa.types.is_floating(kind):
        return "float"
    if pa.types.is_integer(kind):
        return "int"
    if pa.types.is_boolean(kind):
        return "bool"
    if pa.types.is_timestamp(kind):
        return "timestamp"
    return "str"


# The exact types a JSON record's fields have when right: the checks' fast path (anything else, a NumPy
# scalar say, goes through isinstance, as before).
_PLAIN = {"float": (float, int), "int": (int,), "bool": (bool,), "str": (str,), "timestamp": ()}
# Each results column's kind and the plain types that pass it, by name, worked out once (a cache hit checks
# 211 records' ~80 fields each).
_CHECKS = {field.name: (_kind(field.type), _PLAIN[_kind(field.type)], field.type) for field in RESULT_SCHEMA}


def _field_ok(kind: str, value: Any) -> bool:
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "timestamp":
        return isinstance(value, datetime) or (isinstance(value, str) and parse_iso(value) is not None)
    return isinstance(value, str)


def record_problem(record: Mapping[str, Any]) -> str | None:
    """Why `record` cannot become a row of the results table (a field of the wrong type), or None.

    A cheap check of each field against ``RESULT_SCHEMA`` for records from outside the engine
    (the cache): numbers must be numbers, strings strings, timestamps ISO strings.
    """
    checks = _CHECKS
    for name, value in record.items():
        check = checks.get(name)
        if check is None or value is None or type(value) in check[1]:
            continue  # not a column, or undefined, or of a plain type the column takes
        if not _field_ok(check[0], value):
            return f"{name}={value!r:.40} is not a {check[2]}"
    params = record.get("params")
    if not isinstance(params, Mapping) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in params.values()):
        return f"params={params!r:.60} is not a mapping of numbers"
    return None


def param_fields(schema: pa.Schema, rows: list[dict[str, Any]]) -> pa.Schema:
    """`schema` plus a DOUBLE column for each parameter of these rows that has none yet."""
    known = set(schema.names)
    extra = sorted({name for row in rows for name in row if name not in known})
    for name in extra:
        schema = schema.append(pa.field(name, pa.float64()))
    return schema
