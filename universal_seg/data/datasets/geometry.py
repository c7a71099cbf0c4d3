"""Polygon checks shared by the converters (datasets/convert_labelme.py) and tools/check_dataset.py."""

import numpy as np


def polygon_crosses(points) -> bool:
    """True when a closed polygon [[x, y], ...] has two non-adjacent edges that properly intersect."""
    p = np.asarray(points, dtype=np.float64)
    n = len(p)
    a, b = p, np.roll(p, -1, axis=0)  # edge i: a[i] -> b[i]

    def orient(p0, p1, q):
        return np.sign(
            (p1[..., 0] - p0[..., 0]) * (q[..., 1] - p0[..., 1]) - (p1[..., 1] - p0[..., 1]) * (q[..., 0] - p0[..., 0])
        )

    for i in range(n):
        js = np.array([j for j in range(i + 2, n) if not (i == 0 and j == n - 1)], dtype=np.int64)
        if not len(js):
            continue
        d1, d2 = orient(a[i], b[i], a[js]), orient(a[i], b[i], b[js])
        d3, d4 = orient(a[js], b[js], a[i]), orient(a[js], b[js], b[i])
        if np.any((d1 * d2 < 0) & (d3 * d4 < 0)):
            return True
    return False
