"""Reads a run folder's parquet tables with pyarrow, as a user would, and checks them.

    python3 tests/read_run.py runs/<experiment>/<run-id>

Exit 3 when pyarrow is not installed (the Rust test decides whether that is a failure).
"""
import sys

try:
    import pyarrow.parquet as pq
except ImportError as e:  # pragma: no cover
    print(f"pyarrow not installed: {e}", file=sys.stderr)
    sys.exit(3)

run = sys.argv[1]
metrics = pq.read_table(f"{run}/metrics.parquet")
assert metrics.column_names == ["run_id", "epoch", "step", "split", "metric", "class", "value", "wall_time_s"], metrics.column_names
assert str(metrics.schema.field("epoch").type) == "int32"
assert str(metrics.schema.field("step").type) == "int64"
params = pq.read_table(f"{run}/params.parquet")
assert params.column_names == ["run_id", "key", "value"], params.column_names
info = pq.read_table(f"{run}/run.parquet").to_pylist()[0]
assert info["status"] == "completed", info
rows = metrics.to_pylist()
last = max(r["epoch"] for r in rows)
acc = [r["value"] for r in rows if r["epoch"] == last and r["split"] == "test" and r["metric"] == "accuracy"][0]
assert acc == info["test.accuracy"], (acc, info)
print("ok", len(rows), "metric rows; final test accuracy", acc)
