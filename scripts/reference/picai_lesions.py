#!/usr/bin/env python3
"""Fixtures for Lightbox's port of PI-CAI's dynamic lesion extraction (issue 10): runs the
reference implementation, report_guided_annotation 0.3.4's `extract_lesion_candidates`
(threshold "dynamic-v2", defaults otherwise), on fixed probability maps and saves maps and
results into tests/fixtures/picai/.

    python3 -m pip install --target /tmp/pylib numpy scipy report-guided-annotation==0.3.4
    PYTHONPATH=/tmp/pylib python3 scripts/reference/picai_lesions.py tests/fixtures/picai
"""
import json
import os
import sys

import numpy as np
from report_guided_annotation import extract_lesion_candidates

OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)
SHAPE = (16, 32, 32)
rng = np.random.default_rng(20261126)


def blob(centre, sigma, peak):
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    d2 = ((z - centre[0]) / sigma[0]) ** 2 + ((y - centre[1]) / sigma[1]) ** 2 + ((x - centre[2]) / sigma[2]) ** 2
    return peak * np.exp(-0.5 * d2)


cases = {
    # separate lesions of different likelihood
    "separate": [((4, 8, 8), (1.5, 3, 3), 0.92), ((11, 22, 20), (2, 4, 3), 0.61), ((8, 24, 6), (1.5, 2.5, 2.5), 0.33)],
    # two touching lesions (the weaker is adjacent to the stronger), and a sharp tiny peak
    "adjacent": [((8, 12, 12), (2, 3, 3), 0.85), ((8, 12, 19), (2, 3, 3), 0.55), ((3, 27, 27), (0.4, 0.5, 0.5), 0.97)],
    # many lesions, more than five
    "many": [((3 + 2 * (i % 5), 5 + 5 * i, 4 + 4 * (i % 3) * 2), (1.2, 2, 2), 0.9 - 0.1 * i) for i in range(6)],
}
summary = {}
for name, blobs in cases.items():
    p = sum(blob(*b) for b in blobs) + rng.uniform(0.0, 0.004, SHAPE)
    p = np.clip(p, 0.0, 1.0).astype(np.float32)
    p.tofile(os.path.join(OUT, f"{name}.f32"))
    hard, confidences, indexed = extract_lesion_candidates(p, threshold="dynamic-v2")
    indexed.astype(np.uint8).tofile(os.path.join(OUT, f"{name}.labels.u8"))
    summary[name] = {"shape": list(SHAPE), "confidences": [[int(i), float(c)] for i, c in confidences]}
    print(name, summary[name]["confidences"], [int((indexed == i).sum()) for i, _ in confidences])
summary["reference"] = "report_guided_annotation 0.3.4 extract_lesion_candidates(threshold='dynamic-v2')"
json.dump(summary, open(os.path.join(OUT, "cases.json"), "w"), indent=1)
