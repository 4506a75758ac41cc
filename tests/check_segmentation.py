"""Recomputes a segmentation run's logged test scores from its tables and the dataset's
masks, as a user would with pyarrow and the FCN authors' score.py:

    python3 tests/check_segmentation.py RUN_DIR VOC_YEAR_DIR IMAGE_SET CLASS,CLASS,...

- The ground truth side: every mask PNG of the image set is decoded here (zlib and PNG's
  five row filters, no imaging library) and its labelled (not 255) pixels counted; their
  number per class must equal the row sums of the pixel counts in segmentation.parquet.
- The scores: the confusion histogram summed from segmentation.parquet, then score.py's
  formulas (pixel accuracy, nanmean of per-class accuracy, nanmean of IU, frequency-weighted
  IU), compared with metrics.parquet's test rows of the last epoch (1e-9); the histogram
  must equal confusion_matrix_test.parquet.
Exit 3 when pyarrow is missing. The test's images are not resized (the model's input is
their size), so the counts are those of the files.
"""
import math
import struct
import sys
import zlib

try:
    import pyarrow.parquet as pq
except ImportError as e:  # pragma: no cover
    print(f"pyarrow not installed: {e}", file=sys.stderr)
    sys.exit(3)

run, year_dir, image_set, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
classes = ["background"] + names
n = len(classes)


def png_indices(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, idat, w = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour == 3, f"{path}: not an 8-bit palette PNG"
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    rows, prev = [], bytearray(w)
    for y in range(h):
        f, line = raw[y * (w + 1)], bytearray(raw[y * (w + 1) + 1:(y + 1) * (w + 1)])
        for x in range(w):
            a = line[x - 1] if x else 0
            b, c = prev[x], (prev[x - 1] if x else 0)
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return [v for r in rows for v in r]


ids = [l.split()[0] for l in open(f"{year_dir}/ImageSets/Segmentation/{image_set}.txt") if l.strip()]
truth = [0] * n
for i in ids:
    for v in png_indices(f"{year_dir}/SegmentationClass/{i}.png"):
        if v != 255:
            truth[v] += 1

seg = pq.read_table(f"{run}/segmentation.parquet").to_pydict()
last = max(seg["epoch"])
hist = [[0] * n for _ in range(n)]
for e, t, p, k in zip(seg["epoch"], seg["true_class"], seg["pred_class"], seg["pixels"]):
    assert e == last
    hist[classes.index(t)][classes.index(p)] += k
rows = [sum(r) for r in hist]
assert rows == truth, f"labelled pixels per class: tables {rows}, masks {truth}"

conf = pq.read_table(f"{run}/confusion_matrix_test.parquet").to_pydict()
logged_hist = [[0] * n for _ in range(n)]
for t, p, k in zip(conf["true_class"], conf["pred_class"], conf["count"]):
    logged_hist[classes.index(t)][classes.index(p)] = k
assert logged_hist == hist, "confusion_matrix_test.parquet differs from the summed per-image counts"

cols = [sum(hist[t][p] for t in range(n)) for p in range(n)]
diag = [hist[c][c] for c in range(n)]
total = sum(rows)
nan = float("nan")
nanmean = lambda v: (lambda d: sum(d) / len(d) if d else nan)([x for x in v if not math.isnan(x)])
iu = [diag[c] / (rows[c] + cols[c] - diag[c]) if rows[c] + cols[c] - diag[c] else nan for c in range(n)]
want = {
    "pixel_accuracy": sum(diag) / total,
    "mean_accuracy": nanmean([diag[c] / rows[c] if rows[c] else nan for c in range(n)]),
    "miou": nanmean(iu),
    "frequency_weighted_iou": sum(rows[c] / total * iu[c] for c in range(n) if rows[c] > 0),
}
m = pq.read_table(f"{run}/metrics.parquet").to_pydict()
logged = {}
for e, s, name, cls, v in zip(m["epoch"], m["split"], m["metric"], m["class"], m["value"]):
    if e == last and s == "test":
        logged[(name, cls)] = v
for name, v in want.items():
    got = logged[(name, None)]
    assert abs(got - v) < 1e-9, f"{name}: logged {got}, recomputed {v}"
for c in range(n):
    got = logged[("iou", classes[c])]
    assert (math.isnan(got) and math.isnan(iu[c])) or abs(got - iu[c]) < 1e-9, f"iou {classes[c]}: {got} {iu[c]}"
print(f"ok miou {want['miou']:.6f} over {total} labelled pixels of {len(ids)} masks")
