"""Recomputes a detection run's logged mAP from detections.parquet and the ground truth in
the dataset's Annotations XML, as a user would with pyarrow and the VOC devkit's procedure.

    python3 tests/check_detections.py RUN_DIR VOC_YEAR_DIR IMAGE_SET CLASS,CLASS,...

The procedure is written here independently of runner: per class, detections by score
(stable), each matched to the same image's box of highest IoU (continuous edges, VOC's
1-based pixels turned into [xmin - 1, xmax)); IoU >= 0.5 and not yet matched: TP; a
difficult box: ignored; else FP. AP is the area under the monotone precision envelope;
mAP the mean over classes with non-difficult boxes. Exit 3 when pyarrow is missing.
"""
import sys
import xml.etree.ElementTree as ET

try:
    import pyarrow.parquet as pq
except ImportError as e:  # pragma: no cover
    print(f"pyarrow not installed: {e}", file=sys.stderr)
    sys.exit(3)

run, year_dir, image_set, classes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")

ids = [l.split()[0] for l in open(f"{year_dir}/ImageSets/Main/{image_set}.txt") if l.strip()]
truths = {c: [] for c in classes}  # class -> [(sample, box, difficult)]
for sample, i in enumerate(ids):
    root = ET.parse(f"{year_dir}/Annotations/{i}.xml").getroot()
    for obj in root.iter("object"):
        b = obj.find("bndbox")
        box = [float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
        box = [box[0] - 1, box[1] - 1, box[2], box[3]]
        d = obj.find("difficult")
        truths[obj.find("name").text.strip()].append((sample, box, d is not None and int(d.text) != 0))

table = pq.read_table(f"{run}/detections.parquet")
assert table.column_names == ["run_id", "epoch", "sample", "image", "class", "score", "xmin", "ymin", "xmax", "ymax"], table.column_names
dets = table.to_pylist()
for d in dets:
    assert d["image"] == ids[d["sample"]], d


def iou(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


aps = []
for c in classes:
    gt = truths[c]
    npos = sum(1 for g in gt if not g[2])
    if npos == 0:
        continue
    mine = sorted([d for d in dets if d["class"] == c], key=lambda d: -d["score"])
    used = [False] * len(gt)
    tp = fp = 0
    prec, rec = [], []
    for d in mine:
        box = [d["xmin"], d["ymin"], d["xmax"], d["ymax"]]
        best, best_j = -1.0, -1
        for j, g in enumerate(gt):
            if g[0] == d["sample"]:
                o = iou(box, g[1])
                if o > best:
                    best, best_j = o, j
        if best >= 0.5:
            if gt[best_j][2]:
                continue
            if used[best_j]:
                fp += 1
            else:
                used[best_j] = True
                tp += 1
        else:
            fp += 1
        prec.append(tp / (tp + fp))
        rec.append(tp / npos)
    mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    aps.append(sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]))
mine = sum(aps) / max(len(aps), 1)

rows = pq.read_table(f"{run}/metrics.parquet").to_pylist()
last = max(r["epoch"] for r in rows)
logged = [r["value"] for r in rows if r["epoch"] == last and r["split"] == "test" and r["metric"] == "map50"][0]
# Boxes are stored as float32: matches decided within float32 of IoU 0.5 could differ.
assert abs(mine - logged) < 1e-6, (mine, logged)
print(f"ok map50 {mine:.6f} from {len(dets)} detections")
