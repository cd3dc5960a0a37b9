"""What the PyTorch reference scripts (scripts/device/pytorch_reference.py,
scripts/reference/nnunet_v1.py) share: the parity tests' input, exactly as
`lightbox_tests::parity_input` makes it (integer hashing and sums of powers of two, so that NumPy
and Rust hold the same floats), and the random weights the reference networks get."""
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


def randomise_weights(net, seed):
    """Random weights that exercise every tensor: norms not the identity, biases not zero,
    convolutions He-normal. Deterministic for `seed`."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[1] * int(np.prod(p.shape[2:]))
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
