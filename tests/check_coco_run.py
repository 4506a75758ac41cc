"""A runner detection run on COCO data, checked by pycocotools and pyarrow as a user would.

Usage: check_coco_run.py RUN_DIR GT_JSON
- COCO(GT_JSON) loads the ground truth; loadRes(RUN_DIR/detections.json) loads runner's
  results file; COCOeval (bbox) gives the 12 numbers of its summary;
- metrics.parquet's test rows of the last epoch give runner's logged values of the same 12
  (`map`, `map50_coco`, ...), NaN where pycocotools gives -1;
- detections.parquet's rows carry the results file's image and category ids, in order;
- prints `coco equal` when every number agrees to 1e-9, else the two lists, exit 1.
Exit status 3: pycocotools or pyarrow missing.
"""
import json
import math
import sys

try:
    import pyarrow.parquet as pq
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except ImportError as e:
    print(f"pycocotools or pyarrow missing: {e}", file=sys.stderr)
    sys.exit(3)

NAMES = ["map", "map50_coco", "map75", "map_small", "map_medium", "map_large",
         "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large"]

run, gt_path = sys.argv[1], sys.argv[2]
gt = COCO(gt_path)
dets = json.load(open(f"{run}/detections.json"))
if not dets:
    print("detections.json holds no detection", file=sys.stderr)
    sys.exit(1)
dt = gt.loadRes(f"{run}/detections.json")
ev = COCOeval(gt, dt, "bbox")
ev.evaluate()
ev.accumulate()
ev.summarize()
rows = pq.read_table(f"{run}/metrics.parquet").to_pylist()
last = max(r["epoch"] for r in rows if r["split"] == "test")
logged = {r["metric"]: r["value"] for r in rows if r["epoch"] == last and r["split"] == "test"}
want = [float(v) for v in ev.stats]
got = [logged.get(n, float("nan")) for n in NAMES]
ok = all((w == -1 and math.isnan(g)) or abs(w - g) <= 1e-9 for w, g in zip(want, got))
# detections.parquet keeps COCO's ids: row for row the results file's boxes.
table = pq.read_table(f"{run}/detections.parquet").to_pylist()
if len(table) != len(dets):
    print(f"detections.parquet has {len(table)} rows, detections.json {len(dets)}", file=sys.stderr)
    sys.exit(1)
for row, det in zip(table, dets):
    same = (row["image_id"], row["category_id"]) == (det["image_id"], det["category_id"])
    if not same or abs(row["score"] - det["score"]) > 1e-6 or abs(row["xmin"] - det["bbox"][0]) > 1e-4:
        print(f"detections.parquet row {row} differs from detections.json's {det}", file=sys.stderr)
        sys.exit(1)
print(json.dumps({"pycocotools": want, "runner": got, "detections": len(dets),
                  "truths": len(gt.getAnnIds()), "images": len(gt.getImgIds())}))
if not ok:
    sys.exit(1)
print("coco equal")
