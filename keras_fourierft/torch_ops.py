"""Torch-native versions of the spectral math, used on the torch backend.

On torch every `keras.ops` call converts and checks its arguments in Python,
which costs about as much as the small FFTs themselves. These functions do
the same math with torch's own operators and autograd; `spectral` dispatches
to them when Keras runs on torch. This is the only module that imports torch.
"""

import torch
from keras import ops


def delta_from_plan(spectrum, plan, shape, scaling):
    """Torch version of `spectral.delta_from_plan` (same plan, same result).

    The half spectrum of the Hermitian part of `F` is filled with
    `index_add` and transformed with one `irfft2`; torch's autograd gives
    the exact gradient (its `irfft` backward counts the mirrored bins).

    Args:
        spectrum: Tensor of shape `(n,)`.
        plan: The dict returned by `spectral.spectral_plan` (arrays or
            tensors).
        shape: Tuple `(rows, columns)`.
        scaling: Float, the factor `alpha`.

    Returns:
        A float32 torch tensor of `shape`.
    """
    rows, columns = int(shape[0]), int(shape[1])
    half = columns // 2 + 1
    values = ops.convert_to_tensor(spectrum, "float32")
    device = values.device
    source = torch.as_tensor(plan["source"], device=device)
    target = torch.as_tensor(plan["target"], device=device).reshape(-1)
    entries = values.index_select(0, source) * 0.5
    grid = torch.zeros(half * rows, dtype=torch.float32, device=device)
    grid = grid.index_add(0, target, entries).reshape(half, rows)
    return torch.fft.irfft2(grid.T, s=(rows, columns)) * scaling
