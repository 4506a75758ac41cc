"""Recomputes a localization run's logged test localization_error and mean_iou from
localizations.parquet and the dataset's Annotations XML, as a user would with pyarrow:

    python3 tests/check_localizations.py RUN_DIR VOC_YEAR_DIR IMAGE_SET

The true box is each image's largest object (by area, the first listed on ties), VOC's
1-based pixels read as [xmin - 1, xmax); IoU with the predicted box (original pixels);
an image is an error when its predicted class is not the object's or its IoU < 0.5.
Exit 3 when pyarrow is missing.
"""
import sys
import xml.etree.ElementTree as ET

try:
    import pyarrow.parquet as pq
except ImportError as e:  # pragma: no cover
    print(f"pyarrow not installed: {e}", file=sys.stderr)
    sys.exit(3)

run, year_dir, image_set = sys.argv[1], sys.argv[2], sys.argv[3]
ids = [l.split()[0] for l in open(f"{year_dir}/ImageSets/Main/{image_set}.txt") if l.strip()]
truth = {}
for sample, i in enumerate(ids):
    best = None
    for obj in ET.parse(f"{year_dir}/Annotations/{i}.xml").getroot().iter("object"):
        b = obj.find("bndbox")
        x0, y0, x1, y1 = (float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        box = (x0 - 1, y0 - 1, x1, y1)
        area = (box[2] - box[0]) * (box[3] - box[1])
        if best is None or area > best[0]:
            best = (area, obj.find("name").text, box)
    truth[sample] = best


def iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


t = pq.read_table(f"{run}/localizations.parquet").to_pydict()
errors, ious = 0, []
for s, label, pred, *box in zip(t["sample"], t["label"], t["pred"], t["xmin"], t["ymin"], t["xmax"], t["ymax"]):
    _, name, tb = truth[s]
    assert label == name, f"sample {s}: label {label}, XML {name}"
    v = iou(box, tb)
    ious.append(v)
    errors += pred != label or v < 0.5
assert len(ious) == len(ids), f"{len(ious)} rows for {len(ids)} images"
want = {"localization_error": errors / len(ids), "mean_iou": sum(ious) / len(ious)}
m = pq.read_table(f"{run}/metrics.parquet").to_pydict()
last = max(m["epoch"])
logged = {n: v for e, s, n, c, v in zip(m["epoch"], m["split"], m["metric"], m["class"], m["value"])
          if e == last and s == "test" and c is None}
# The table's boxes are float32 in pixels: IoUs agree to about 1e-6.
for name, v in want.items():
    assert abs(logged[name] - v) < 1e-5, f"{name}: logged {logged[name]}, recomputed {v}"
print(f"ok localization_error {want['localization_error']:.4f} mean_iou {want['mean_iou']:.4f}")
