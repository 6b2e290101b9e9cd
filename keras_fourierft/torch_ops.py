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
    tensors = _on_device(plan, values.device)
    device = values.device
    source = tensors["source"]
    target = tensors["target"].reshape(-1)
    entries = values.index_select(0, source) * 0.5
    grid = torch.zeros(half * rows, dtype=torch.float32, device=device)
    grid = grid.index_add(0, target, entries).reshape(half, rows)
    return torch.fft.irfft2(grid.T, s=(rows, columns)) * scaling


def spectral_matmul(inputs, spectrum, plan, shape, scaling):
    """Torch version of `spectral.spectral_matmul` (same plan, same result).

    Args:
        inputs: Tensor of shape `(tokens, d1)`.
        spectrum: Tensor of shape `(n,)`.
        plan: The dict returned by `spectral.activation_plan`.
        shape: Tuple `(d1, d2)`.
        scaling: Float, the factor `alpha`.

    Returns:
        A float32 torch tensor of shape `(tokens, d2)`.
    """
    x = ops.convert_to_tensor(inputs).float()
    values = ops.convert_to_tensor(spectrum, "float32")
    tensors = _on_device(plan, x.device)
    return _SpectralMatmul.apply(x, values, tensors, tuple(shape), float(scaling))


def _on_device(plan, device):
    """The plan's arrays as tensors on `device`, copied from the host once.

    A plan (numpy arrays, shared with the traced backends) keeps its torch
    copies per device, so an eager call does not copy it again; tensors on
    the `meta` device of symbolic shape inference are not kept.
    """
    key = ("torch", str(device))
    tensors = plan.get(key)
    if tensors is None:
        arrays = {name: value for name, value in plan.items() if isinstance(name, str)}
        tensors = {
            name: torch.as_tensor(value, device=device)
            for name, value in arrays.items()
        }
        if device.type != "meta":
            plan[key] = tensors
    return tensors


def _gather_conjugate(spectrum, plan, prefix):
    """`conj(A[a_k])` for every coefficient, as `(tokens, n)` complex.

    Token-major throughout (gathers and the scatter run along the last axis),
    so no intermediate is transposed.
    """
    gathered = spectrum.index_select(1, plan[prefix + "gather"])
    return torch.complex(gathered.real, gathered.imag * plan[prefix + "gather_sign"])


def _scatter_inverse(products, plan, prefix, size, factor):
    """Scatters `(tokens, n)` products into a half spectrum, inverse FFT."""
    entries = products.index_select(1, plan[prefix + "source"])
    # `target_sign` is +-0.5: halved, and conjugated where negative.
    sign = plan[prefix + "target_sign"]
    entries = torch.complex(entries.real * sign.abs(), entries.imag * sign)
    half = torch.zeros(
        (products.shape[0], size // 2 + 1), dtype=entries.dtype, device=entries.device
    )
    half = half.index_add(1, plan[prefix + "target"].long(), entries)
    return torch.fft.irfft(half, n=size) * factor


class _SpectralMatmul(torch.autograd.Function):
    """`x @ delta_W` with the exact gradient of `spectral.ops_spectral_matmul`."""

    @staticmethod
    def forward(ctx, x, values, plan, shape, scaling):
        d1, d2 = shape
        gathered = _gather_conjugate(torch.fft.rfft(x), plan, "forward_")
        ctx.save_for_backward(gathered, values)
        ctx.plan, ctx.shape, ctx.scaling = plan, shape, scaling
        return _scatter_inverse(gathered * values, plan, "forward_", d2, scaling / d1)

    @staticmethod
    def backward(ctx, upstream):
        gathered, values = ctx.saved_tensors
        plan, (d1, d2), scaling = ctx.plan, ctx.shape, ctx.scaling
        g = _gather_conjugate(torch.fft.rfft(upstream.float()), plan, "backward_")
        values_grad = (gathered * g).real.sum(0) * (scaling / (d1 * d2))
        inputs_grad = _scatter_inverse(g * values, plan, "backward_", d1, scaling / d2)
        return inputs_grad, values_grad, None, None, None
