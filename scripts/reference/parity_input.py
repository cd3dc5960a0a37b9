"""The parity tests' input, exactly as `lightbox_tests::parity_input` makes it (integer hashing
and sums of powers of two, so that NumPy and Rust hold the same floats). Shared by the PyTorch
reference scripts (scripts/device/pytorch_reference.py, scripts/reference/nnunet_v1.py)."""
import numpy as np


def parity_input(dims, channels, seed):
    d, h, w = dims
    r = min(dims) * 3 // 10
    z, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    ball = ((z - d // 2) ** 2 + (y - h // 2) ** 2 + (x - w // 2) ** 2) < r * r
    i = np.arange(d * h * w, dtype=np.uint64)
    out = []
    for c in range(channels):
        s = np.uint64(((seed + c) * 40503) & 0xFFFFFFFF)
        k = (i * np.uint64(2654435761) + s) & np.uint64(0xFFFFFFFF)
        k ^= k >> np.uint64(15)
        k = (k * np.uint64(2246822519)) & np.uint64(0xFFFFFFFF)
        k ^= k >> np.uint64(13)
        noise = (k >> np.uint64(9)).astype(np.float32) / np.float32(8388608.0) * np.float32(0.5)
        out.append(noise.reshape(dims) + np.where(ball, np.float32(0.5), np.float32(0.0)))
    return np.stack(out).astype(np.float32)
