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
    """`conj(A[a_k])` as `(n, tokens)` real and imaginary parts."""
    transposed = spectrum.T
    gathered = transposed.index_select(0, plan[prefix + "gather"])
    sign = plan[prefix + "gather_sign"][:, None]
    return gathered.real.contiguous(), gathered.imag * sign


def _scatter_inverse(real, imag, plan, prefix, size, factor):
    """Scatters `(n, tokens)` products into a half spectrum, inverse FFT."""
    source = plan[prefix + "source"]
    target = plan[prefix + "target"]
    sign = plan[prefix + "target_sign"][:, None]
    bins = size // 2 + 1
    entries = torch.complex(
        real.index_select(0, source) * 0.5,
        imag.index_select(0, source) * sign,
    )
    half = torch.zeros(
        (bins, real.shape[1]), dtype=entries.dtype, device=entries.device
    )
    half = half.index_add(0, target.long(), entries)
    return torch.fft.irfft(half.T, n=size) * factor


class _SpectralMatmul(torch.autograd.Function):
    """`x @ delta_W` with the exact gradient of `spectral.ops_spectral_matmul`."""

    @staticmethod
    def forward(ctx, x, values, plan, shape, scaling):
        d1, d2 = shape
        real, imag = _gather_conjugate(torch.fft.rfft(x), plan, "forward_")
        weights = values[:, None]
        ctx.save_for_backward(real, imag, values)
        ctx.plan, ctx.shape, ctx.scaling = plan, shape, scaling
        return _scatter_inverse(
            real * weights, imag * weights, plan, "forward_", d2, scaling / d1
        )

    @staticmethod
    def backward(ctx, upstream):
        real, imag, values = ctx.saved_tensors
        plan, (d1, d2), scaling = ctx.plan, ctx.shape, ctx.scaling
        g_real, g_imag = _gather_conjugate(
            torch.fft.rfft(upstream.float()), plan, "backward_"
        )
        values_grad = (real * g_real - imag * g_imag).sum(1) * (scaling / (d1 * d2))
        weights = values[:, None]
        inputs_grad = _scatter_inverse(
            g_real * weights, g_imag * weights, plan, "backward_", d1, scaling / d2
        )
        return inputs_grad, values_grad, None, None, None
