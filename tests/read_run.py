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
# What the run ran with: its thread count and CPU kernel level (src/ops/kernels.rs).
run_schema = pq.read_schema(f"{run}/run.parquet")
assert str(run_schema.field("threads").type) == "uint32" and info["threads"] >= 1, info
assert info["kernels"] in ("avx512", "avx2", "baseline"), info
rows = metrics.to_pylist()
last = max(r["epoch"] for r in rows)
acc = [r["value"] for r in rows if r["epoch"] == last and r["split"] == "test" and r["metric"] == "accuracy"][0]
assert acc == info["test.accuracy"], (acc, info)

# predictions.parquet: recompute accuracy and the balanced error rate from the predictions,
# equal to the logged values (the course's definitions, computed here independently).
pred = pq.read_table(f"{run}/predictions.parquet")
assert pred.column_names == ["run_id", "sample", "label", "pred", "scores"], pred.column_names
assert str(pred.schema.field("sample").type) == "int64"
assert str(pred.schema.field("label").type) == "int32" and str(pred.schema.field("pred").type) == "int32"
assert str(pred.schema.field("scores").type) == "list<item: float>", pred.schema.field("scores").type
p = pred.to_pylist()
assert sorted(r["sample"] for r in p) == list(range(len(p)))
recomputed = sum(r["label"] == r["pred"] for r in p) / len(p)
assert abs(recomputed - acc) < 1e-12, (recomputed, acc)
for r in p:
    assert abs(sum(r["scores"]) - 1) < 1e-4 and r["pred"] == max(range(len(r["scores"])), key=lambda c: (r["scores"][c], -c))
logged = {r["metric"]: r["value"] for r in rows if r["epoch"] == last and r["split"] == "test" and r["class"] is None}
if "balanced_error_rate" in logged:
    classes = sorted({r["label"] for r in p})
    recalls = [sum(r["pred"] == c for r in p if r["label"] == c) / sum(r["label"] == c for r in p) for c in classes]
    ber = 1 - sum(recalls) / len(recalls)
    assert abs(ber - logged["balanced_error_rate"]) < 1e-12, (ber, logged["balanced_error_rate"])
    per_class = {r["class"]: r["value"] for r in rows if r["epoch"] == last and r["metric"] == "per_class_error"}
    assert abs(sum(per_class.values()) / len(per_class) - ber) < 1e-12, per_class
print("ok", len(rows), "metric rows; final test accuracy", acc, "recomputed from", len(p), "predictions")
