"""Independent (scipy) references for the crop tests of resample.py and transforms.py."""

import numpy as np
from scipy import ndimage


def reference_resize(image, box, size):
    """Crop, then bilinear with half-pixel centres, clamped to the crop (map_coordinates)."""
    top, left, h, w = box
    crop = image[top : top + h, left : left + w].astype(np.float64)
    ys = (np.arange(size) + 0.5) * h / size - 0.5
    xs = (np.arange(size) + 0.5) * w / size - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return ndimage.map_coordinates(crop, [yy, xx], order=1, mode="nearest")
