"""A run's TensorBoard event files, read by TensorBoard's own reader as `tensorboard
--logdir` reads them.

Usage: check_tensorboard.py RUN_DIR
- TensorBoard's event file loader reads every record of RUN_DIR/tb/ (it checks each
  record's length and data CRC-32C and fails on a mismatch);
- EventAccumulator gives the scalars: every row of metrics.parquet (pyarrow) is there,
  once, at its step, as float32 (tag `<split>/<metric>` or `<split>/<metric>/<class>`);
  no tag has a step twice;
- the config is there as text, equal to config.toml; the plots are there as images;
- prints `tensorboard ok SCALARS IMAGES`.
Exit status 3: tensorboard or pyarrow missing.
"""
import collections
import glob
import sys

try:
    import numpy as np
    import pyarrow.parquet as pq
    from tensorboard.backend.event_processing import event_accumulator, event_file_loader
except ImportError as e:
    print(f"tensorboard or pyarrow missing: {e}", file=sys.stderr)
    sys.exit(3)

run = sys.argv[1]
files = sorted(glob.glob(f"{run}/tb/events.out.tfevents.*"))
if len(files) != 1:
    print(f"expected one event file in {run}/tb, found {files}", file=sys.stderr)
    sys.exit(1)
records = sum(1 for _ in event_file_loader.EventFileLoader(files[0]).Load())
acc = event_accumulator.EventAccumulator(f"{run}/tb", size_guidance={"scalars": 0, "images": 0, "tensors": 0})
acc.Reload()
tags = acc.Tags()
rows = pq.read_table(f"{run}/metrics.parquet").to_pylist()
want = collections.defaultdict(dict)
for r in rows:
    tag = f"{r['split']}/{r['metric']}" + (f"/{r['class']}" if r["class"] is not None else "")
    want[tag][r["step"]] = np.float32(r["value"])
bad = []
for tag, by_step in want.items():
    if tag not in tags["scalars"]:
        bad.append(f"{tag} missing")
        continue
    events = acc.Scalars(tag)
    steps = [e.step for e in events]
    if len(steps) != len(set(steps)):
        bad.append(f"{tag}: a step twice {steps}")
    got = {e.step: np.float32(e.value) for e in events}
    for step, v in by_step.items():
        g = got.get(step)
        if g is None or not (g == v or (np.isnan(g) and np.isnan(v))):
            bad.append(f"{tag} step {step}: {g} != {v}")
extra = set(tags["scalars"]) - set(want)
if extra:
    bad.append(f"tags not in metrics.parquet: {sorted(extra)}")
text = acc.Tensors("config")[0].tensor_proto.string_val[0].decode()
if open(f"{run}/config.toml").read().strip() not in text:
    bad.append("the config text differs from config.toml")
images = len(tags["images"])
if bad:
    print("\n".join(bad[:20]), file=sys.stderr)
    sys.exit(1)
print(f"tensorboard ok {sum(len(v) for v in want.values())} {images} {records}")
