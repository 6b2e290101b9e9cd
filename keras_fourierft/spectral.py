"""The spectral math of FourierFT as pure functions.

Frequency locations are generated with numpy (they are fixed, never trained).
The update `F -> scaling * Re(IDFT2(F))` is applied in one of two ways, both
with `keras.ops` and an exact custom gradient:

- `delta_from_plan` builds the dense weight update (one small 2-D FFT), for
  layers whose weight is small next to the tokens times coefficients;
- `spectral_matmul` applies the update to activations, `x @ delta_W`, without
  ever forming `delta_W`: an FFT of each input row, a gather and scatter of
  the `n` coefficients, an inverse FFT of each output row. It costs
  O(tokens * (d log d + n)) instead of O(tokens * d1 * d2).

`choose_compute` picks the cheaper one from static shapes. On the torch
backend both run with torch's own operators (`torch_ops`), where the per-call
overhead of `keras.ops` would be as large as the FFTs.

Every FFT goes through `_fft`, `_rfft` or `_irfft`, which on JAX on CPU keep
the FFT's operand and result row-major (`jax_ops`).
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from keras_fourierft.config import SAMPLINGS
from keras_fourierft.config import check_positive_integer
from keras_fourierft.config import check_seed
from keras_fourierft.geometry import kernel_view  # noqa: F401 (public here)


def _validate_location_args(out_features, in_features, n_frequency, seed):
    total = check_positive_integer("out_features", out_features)
    total *= check_positive_integer("in_features", in_features)
    if check_positive_integer("n_frequency", n_frequency) > total:
        raise ValueError(
            f"`n_frequency`={n_frequency} is larger than the number of entries "
            f"of the {out_features}x{in_features} weight ({total}). Use at most "
            f"{total} frequencies for this layer."
        )
    check_seed(seed)


def _mt19937_stream(seed, count):
    """First `count` 32-bit outputs of MT19937 seeded like `torch.manual_seed`.

    Uses a private bit generator, so no global random state is read or
    changed.
    """
    state = np.random.RandomState(int(seed)).get_state(legacy=False)["state"]
    bit_generator = np.random.MT19937()
    bit_generator.state = {"bit_generator": "MT19937", "state": state}
    return bit_generator.random_raw(count).astype(np.uint64)


def _randperm_prefix(total, count, seed):
    """The first `count` entries of `torch.randperm(total)` for a seeded CPU
    generator, in O(count) time and memory.

    torch shuffles `arange(total)` with Fisher-Yates: step `i` draws a 32-bit
    number `u` and swaps entries `i` and `i + u % (total - i)`. Entry `i` is
    final after step `i`, so only the first `count` steps matter; the entries
    touched so far are kept in a dictionary instead of a full array.
    """
    draws = _mt19937_stream(seed, count)
    remaining = total - np.arange(count, dtype=np.uint64)
    targets = (np.arange(count, dtype=np.uint64) + draws % remaining).tolist()
    moved = {}
    prefix = np.empty(count, dtype=np.int64)
    for i, target in enumerate(targets):
        value_i = moved.get(i, i)
        prefix[i] = moved.get(target, target)
        moved[target] = value_i
    return prefix


def _frequency_biased_flat(
    out_features, in_features, n_frequency, seed, center_frequency, bandwidth
):
    """Weighted sampling without replacement of `n_frequency` flat indices.

    Uses exponential keys (Efraimidis-Spirakis): each location draws
    `E / p` with `E ~ Exp(1)`; the `n_frequency` smallest keys form a sample
    without replacement with probabilities proportional to `p`.
    """
    if bandwidth is None or bandwidth <= 0:
        raise ValueError(
            "Frequency-biased sampling needs a positive `bandwidth`. "
            f"Received: bandwidth={bandwidth!r}"
        )
    if center_frequency is None or center_frequency < 0:
        raise ValueError(
            "Frequency-biased sampling needs a non-negative "
            f"`center_frequency`. Received: center_frequency={center_frequency!r}"
        )
    rows = np.fft.fftfreq(out_features) * out_features
    cols = np.fft.fftfreq(in_features) * in_features
    distance = np.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        exponent = (distance**2 - center_frequency**2) / (distance * bandwidth)
        weights = np.exp(-(exponent**2))
    weights[distance == 0] = 1.0 if center_frequency == 0 else 0.0
    weights = np.nan_to_num(weights, nan=0.0)
    available = int(np.count_nonzero(weights))
    if available < n_frequency:
        raise ValueError(
            f"Frequency-biased sampling with center_frequency={center_frequency} "
            f"and bandwidth={bandwidth} gives only {available} locations of "
            f"non-zero probability, fewer than n_frequency={n_frequency}. "
            "Increase `bandwidth` or lower `n_frequency`."
        )
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    with np.errstate(divide="ignore"):
        keys = rng.standard_exponential(weights.size) / weights
    chosen = np.argpartition(keys, n_frequency - 1)[:n_frequency]
    return chosen[np.argsort(keys[chosen], kind="stable")].astype(np.int64)


def frequency_locations(
    out_features,
    in_features,
    n_frequency,
    seed=777,
    sampling="uniform",
    center_frequency=None,
    bandwidth=None,
):
    """Returns the fixed spectral locations that FourierFT trains.

    With the default `sampling="uniform"` the locations are bit-identical to
    the ones Hugging Face PEFT's FourierFT uses for a
    `torch.nn.Linear(in_features, out_features)` with `random_loc_seed=seed`
    (`torch.randperm(out_features * in_features)[:n_frequency]` of a generator
    seeded with `seed`), computed without torch in O(n_frequency).

    `sampling="frequency_biased"` implements Eq. 5 of the FourierFT paper:
    location `(u, v)` is drawn with probability proportional to
    `exp(-((D**2 - center_frequency**2) / (D * bandwidth))**2)`, where `D` is
    the distance of `(u, v)` from the zero frequency (frequencies counted
    signed, as `numpy.fft.fftfreq` does). Locations are distinct and depend
    only on `seed`.

    Neither mode reads or changes any global random state.

    Args:
        out_features: Integer, the output dimension of the adapted weight.
        in_features: Integer, the input dimension of the adapted weight.
        n_frequency: Integer, the number of locations (trainable coefficients).
        seed: Integer in `[0, 2**32)`, PEFT's `random_loc_seed`.
        sampling: `"uniform"` (PEFT-identical) or `"frequency_biased"`.
        center_frequency: Float, the favoured frequency `f_c` of the
            frequency-biased sampling (in cycles over the weight; 0 favours
            the lowest frequencies).
        bandwidth: Float, the bandwidth `W` of the frequency-biased sampling.

    Returns:
        An int64 numpy array of shape `(2, n_frequency)`: row 0 indexes the
        output dimension, row 1 the input dimension.

    Example:

    >>> locations = frequency_locations(768, 768, 1000, seed=777)
    >>> locations.shape
    (2, 1000)
    """
    _validate_location_args(out_features, in_features, n_frequency, seed)
    if sampling == "uniform":
        flat = _randperm_prefix(
            int(out_features) * int(in_features), int(n_frequency), seed
        )
    elif sampling == "frequency_biased":
        flat = _frequency_biased_flat(
            int(out_features),
            int(in_features),
            int(n_frequency),
            seed,
            center_frequency,
            bandwidth,
        )
    else:
        raise ValueError(
            f"`sampling` must be one of {SAMPLINGS}. Received: sampling={sampling!r}"
        )
    return np.stack([flat // in_features, flat % in_features]).astype(np.int64)


def spectral_plan(indices, shape):
    """Precomputes the index arrays `delta_from_plan` needs (numpy, once).

    The update `Re(IDFT2(F))` of a real `F` equals the inverse DFT of its
    Hermitian part `H = (F + F[-u, -v]) / 2`, which is real and so needs only
    the half spectrum `v <= d2 // 2` (an inverse real FFT along the last
    axis). Each coefficient therefore lands at its own location and at its
    mirror, where that falls in the half spectrum. The gradient, `scaling *
    Re(IDFT2(G))` at the locations, is read from the real FFT of `G` at the
    location or, outside the half spectrum, at its mirror.

    Args:
        indices: Integer array of shape `(n, 2)`, positions in the update.
        shape: Tuple `(rows, columns)` of the update.

    Returns:
        A dict of int32 numpy arrays: `source` (coefficient of each half
        spectrum entry), `target` (flat position in the transposed half
        spectrum, `column * rows + row`) and `gradient` (flat position to read
        each coefficient's gradient from).
    """
    rows, columns = int(shape[0]), int(shape[1])
    half = columns // 2 + 1
    indices = np.asarray(indices, dtype=np.int64)
    u, v = indices[:, 0], indices[:, 1]
    mirror_u, mirror_v = (-u) % rows, (-v) % columns
    count = np.arange(len(u))
    source = np.concatenate([count, count])
    all_u = np.concatenate([u, mirror_u])
    all_v = np.concatenate([v, mirror_v])
    keep = all_v < half
    in_half = v < half
    gradient = np.where(in_half, v * rows + u, mirror_v * rows + mirror_u)
    return {
        "source": source[keep].astype(np.int32),
        "target": (all_v[keep] * rows + all_u[keep]).astype(np.int32)[:, None],
        "gradient": gradient.astype(np.int32),
    }


def delta_from_plan(spectrum, plan, shape, scaling):
    """`scaling * Re(IDFT2(F))` from a `spectral_plan`, with an exact gradient.

    Forward: a complex FFT over the half spectrum and an inverse real FFT.
    Backward: a real FFT and a complex FFT over the half spectrum, read at
    the locations. Both cost about half of a full complex 2-D FFT.

    Args:
        spectrum: Tensor of shape `(n,)`.
        plan: The dict returned by `spectral_plan` (arrays or tensors).
        shape: Tuple `(rows, columns)`.
        scaling: Float, the factor `alpha`.

    Returns:
        A float32 tensor of `shape`.
    """
    if keras.backend.backend() == "torch":
        from keras_fourierft import torch_ops

        return torch_ops.delta_from_plan(spectrum, plan, shape, scaling)
    return ops_delta_from_plan(spectrum, plan, shape, scaling)


def ops_delta_from_plan(spectrum, plan, shape, scaling):
    """`delta_from_plan` written with `keras.ops` only (any backend).

    `delta_from_plan` uses it on TensorFlow and JAX; on torch it calls the
    torch-native version instead, which computes the same values with less
    per-op overhead.

    Args:
        spectrum: Tensor of shape `(n,)`.
        plan: The dict returned by `spectral_plan` (arrays or tensors).
        shape: Tuple `(rows, columns)`.
        scaling: Float, the factor `alpha`.

    Returns:
        A float32 tensor of `shape`.
    """
    rows, columns = int(shape[0]), int(shape[1])
    half = columns // 2 + 1

    @ops.custom_gradient
    def delta(values):
        entries = ops.take(values, plan["source"]) * 0.5
        grid = ops.scatter_update(
            ops.zeros((half * rows,), dtype="float32"),
            plan["target"],
            entries,
            reduction="add",
        )
        grid = ops.reshape(grid, (half, rows))
        real, imag = _fft((grid, ops.zeros_like(grid)))
        # ifft of a real input is the conjugate of its fft over `rows`.
        real = ops.transpose(real) / rows
        imag = ops.transpose(imag) / -rows
        result = _irfft((real, imag), columns) * scaling

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, "float32")
            real, imag = _rfft(upstream)
            real, _ = _fft((ops.transpose(real), ops.transpose(imag)))
            flat = ops.reshape(real, (-1,))
            factor = scaling / (rows * columns)
            return ops.take(flat, plan["gradient"]) * factor

        return result, grad

    return delta(ops.cast(spectrum, "float32"))


def _fft(x):
    """`ops.fft` of a `(real, imag)` pair over the last axis."""
    if _pins_layouts():
        from keras_fourierft import jax_ops

        return jax_ops.fft(x)
    return ops.fft(x)


def _rfft(x):
    """`ops.rfft` over the last axis."""
    if _pins_layouts():
        from keras_fourierft import jax_ops

        return jax_ops.rfft(x)
    return ops.rfft(x)


def _irfft(x, fft_length):
    """`ops.irfft` of a `(real, imag)` pair over the last axis."""
    if _pins_layouts():
        from keras_fourierft import jax_ops

        return jax_ops.irfft(x, fft_length)
    return ops.irfft(x, fft_length=fft_length)


def _pins_layouts():
    """Whether FFTs keep row-major operands (JAX on CPU, see `jax_ops`).

    XLA's GPU backend asks for row-major FFT layouts itself, and TPU layouts
    are tiled and left to XLA.
    """
    if keras.backend.backend() != "jax":
        return False
    from keras_fourierft import jax_ops

    return jax_ops.can_pin_layouts() and device_kind() == "cpu"


def spectral_delta(spectrum, indices, shape, scaling):
    """Computes the FourierFT weight update `scaling * Re(IDFT2(F))`.

    `F` is a zero matrix of `shape` holding `spectrum[k]` at
    `indices[k]`; the inverse 2-D DFT uses the "backward" normalisation
    (divides by the number of entries), as `numpy.fft.ifft2` does. The update
    is always computed in float32, whatever the dtype of `spectrum`, and is
    differentiable with respect to `spectrum`.

    Args:
        spectrum: Tensor of shape `(n,)`, the spectral coefficients.
        indices: Integer array of shape `(n, 2)`: the positions of the
            coefficients in `F` (row, column), distinct.
        shape: Tuple `(rows, columns)`, the shape of the update. For a Keras
            kernel this is `(input_features, output_features)`.
        scaling: Float, the factor `alpha`.

    Returns:
        A float32 tensor of `shape`.

    Example:

    >>> import numpy as np
    >>> indices = np.array([[0, 1], [2, 3]])
    >>> delta = spectral_delta(np.ones(2, "float32"), indices, (4, 5), 1.0)
    """
    plan = spectral_plan(np.asarray(indices), shape)
    return delta_from_plan(spectrum, plan, shape, scaling)


def kernel_indices(locations):
    """Converts `frequency_locations` output into `spectral_delta` indices of a
    Keras `(input, output)` kernel.

    Args:
        locations: Integer array of shape `(2, n)` (output row, input row).

    Returns:
        An int32 numpy array of shape `(n, 2)` holding `(input, output)`
        positions.

    Example:

    >>> kernel_indices(np.array([[1, 2], [3, 4]]))
    array([[3, 1],
           [4, 2]], dtype=int32)
    """
    locations = np.asarray(locations)
    return np.stack([locations[1], locations[0]], axis=1).astype(np.int32)


def activation_plan(indices, shape):
    """Precomputes the index arrays `spectral_matmul` needs (numpy, once).

    With the kernel's 2-D view `(d1 inputs, d2 outputs)`, locations
    `(p_k, q_k)` and `X` the DFT of an input row over its `d1` features,

        (x @ delta_W)[j] = scaling / (d1 * d2) * Re(sum_k c_k * conj(X[p_k])
                           * exp(2 pi i q_k j / d2)),

    so the update is a real FFT over `d1`, a gather of `n` bins, a scatter
    into the Hermitian half spectrum over `d2` and an inverse real FFT. The
    input gradient is the same construction with the roles of `d1` and `d2`
    swapped, so the plan holds both directions.

    Args:
        indices: Integer array of shape `(n, 2)`: `(input, output)` positions
            in the kernel's 2-D view (as `kernel_indices` returns them).
        shape: Tuple `(d1, d2)`.

    Returns:
        A dict of int32/float32 numpy arrays: `forward_*` and `backward_*`
        entries (see `_transfer_plan`).
    """
    d1, d2 = int(shape[0]), int(shape[1])
    indices = np.asarray(indices, dtype=np.int64)
    p, q = indices[:, 0], indices[:, 1]
    plan = {}
    for name, values in _transfer_plan(p, q, d1, d2).items():
        plan["forward_" + name] = values
    for name, values in _transfer_plan(q, p, d2, d1).items():
        plan["backward_" + name] = values
    return plan


def _transfer_plan(a, b, size_a, size_b):
    """Index arrays to move `c_k * conj(A[a_k])` to bin `b_k` of a half spectrum.

    `A` is the real FFT (bins `0 .. size_a // 2`) of a real signal, so
    `conj(A[a])` is read at bin `a` with its imaginary part negated, or at
    the mirrored bin `size_a - a` as it is (`gather`, `gather_sign`). Each
    product lands at `b` and, conjugated, at `-b` where those fall in the
    half spectrum over `size_b` (`source`, `target`, `target_sign`), halved,
    so that an inverse real FFT gives the real part of the full sum. Entries
    are sorted by target for a sorted segment sum.
    """
    half_a, half_b = size_a // 2, size_b // 2
    gather = np.where(a <= half_a, a, size_a - a)
    gather_sign = np.where(a <= half_a, -1.0, 1.0)
    count = np.arange(len(a))
    mirrored = (size_b - b) % size_b
    source = np.concatenate([count, count])
    target = np.concatenate([b, mirrored])
    target_sign = np.concatenate([np.ones(len(b)), -np.ones(len(b))])
    keep = target <= half_b
    order = np.argsort(target[keep], kind="stable")
    return {
        "gather": gather.astype(np.int32),
        "gather_sign": gather_sign.astype(np.float32),
        "source": source[keep][order].astype(np.int32),
        "target": target[keep][order].astype(np.int32),
        "target_sign": (target_sign[keep][order] * 0.5).astype(np.float32),
    }


def spectral_matmul(inputs, spectrum, plan, shape, scaling):
    """`inputs @ delta_W` without forming `delta_W`, with an exact gradient.

    Args:
        inputs: Tensor of shape `(tokens, d1)`.
        spectrum: Tensor of shape `(n,)`, the effective coefficients.
        plan: The dict returned by `activation_plan`.
        shape: Tuple `(d1, d2)`.
        scaling: Float, the factor `alpha`.

    Returns:
        A float32 tensor of shape `(tokens, d2)`, equal to
        `inputs @ spectral_delta(spectrum, ..., shape, scaling)`.

    Example:

    >>> indices = np.array([[0, 1], [2, 3]])
    >>> plan = activation_plan(indices, (4, 5))
    >>> y = spectral_matmul(np.ones((3, 4), "float32"), np.ones(2, "float32"),
    ...                     plan, (4, 5), 1.0)
    """
    if keras.backend.backend() == "torch":
        from keras_fourierft import torch_ops

        return torch_ops.spectral_matmul(inputs, spectrum, plan, shape, scaling)
    return ops_spectral_matmul(inputs, spectrum, plan, shape, scaling)


def _gather_conjugate(real, imag, plan, prefix):
    """`conj(A[a_k])` for every coefficient, as `(n, tokens)` real and imag."""
    gather = plan[prefix + "gather"]
    sign = ops.expand_dims(ops.convert_to_tensor(plan[prefix + "gather_sign"]), 1)
    real = ops.take(ops.transpose(real), gather, axis=0)
    imag = ops.take(ops.transpose(imag), gather, axis=0) * sign
    return real, imag


def _scatter_inverse(real, imag, plan, prefix, size, factor):
    """Scatters `(n, tokens)` products into a half spectrum, inverse real FFT."""
    source = plan[prefix + "source"]
    target = plan[prefix + "target"]
    sign = ops.expand_dims(ops.convert_to_tensor(plan[prefix + "target_sign"]), 1)
    bins = size // 2 + 1
    # Targets are sorted; TensorFlow's sorted segment sum cannot be given the
    # number of segments, so it gets the unsorted one.
    is_sorted = keras.backend.backend() == "jax"
    real = ops.segment_sum(
        ops.take(real, source, axis=0) * 0.5, target, bins, sorted=is_sorted
    )
    imag = ops.segment_sum(
        ops.take(imag, source, axis=0) * sign, target, bins, sorted=is_sorted
    )
    result = _irfft((ops.transpose(real), ops.transpose(imag)), size)
    return result * factor


def ops_spectral_matmul(inputs, spectrum, plan, shape, scaling):
    """`spectral_matmul` written with `keras.ops` only (any backend).

    Args:
        inputs: Tensor of shape `(tokens, d1)`.
        spectrum: Tensor of shape `(n,)`.
        plan: The dict returned by `activation_plan`.
        shape: Tuple `(d1, d2)`.
        scaling: Float, the factor `alpha`.

    Returns:
        A float32 tensor of shape `(tokens, d2)`.
    """
    d1, d2 = int(shape[0]), int(shape[1])

    @ops.custom_gradient
    def apply(x, values):
        x_real, x_imag = _rfft(x)
        gathered_real, gathered_imag = _gather_conjugate(
            x_real, x_imag, plan, "forward_"
        )
        weights = ops.expand_dims(values, 1)
        result = _scatter_inverse(
            gathered_real * weights,
            gathered_imag * weights,
            plan,
            "forward_",
            d2,
            scaling / d1,
        )

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, "float32")
            g_real, g_imag = _rfft(upstream)
            g_real, g_imag = _gather_conjugate(g_real, g_imag, plan, "backward_")
            products = gathered_real * g_real - gathered_imag * g_imag
            values_grad = ops.sum(products, axis=1) * (scaling / (d1 * d2))
            inputs_grad = _scatter_inverse(
                g_real * weights,
                g_imag * weights,
                plan,
                "backward_",
                d1,
                scaling / d2,
            )
            return inputs_grad, values_grad

        return result, grad

    return apply(ops.cast(inputs, "float32"), ops.cast(spectrum, "float32"))


def rowwise_spectral_matmul(inputs, table, row_ids, plan, shape, scaling):
    """`inputs @ delta_W(table[row_ids[b]])` for the tokens of each row `b`.

    Every adapter of `table` shares the frequency locations of `plan`, so
    choosing an adapter per batch row is a gather of `batch` rows of
    coefficients, broadcast over each row's tokens; the FFTs, gathers and
    scatter are those of `spectral_matmul` with one adapter, and the cost
    does not grow with the number of adapters. Forward only (the table is
    not trained): gradients are the backend's.

    Args:
        inputs: Tensor of shape `(tokens, d1)`, the tokens of `batch` rows
            in row order (`tokens = batch * tokens_per_row`).
        table: Tensor of shape `(adapters, n)`, effective coefficients.
        row_ids: Integer tensor of shape `(batch,)`, a row of `table` per
            batch row.
        plan: The dict returned by `activation_plan`.
        shape: Tuple `(d1, d2)`.
        scaling: Float, the factor `alpha` shared by the adapters.

    Returns:
        A float32 tensor of shape `(tokens, d2)`.

    Example:

    >>> indices = np.array([[0, 1], [2, 3]])
    >>> plan = activation_plan(indices, (4, 5))
    >>> table = np.array([[0.0, 0.0], [1.0, 2.0]], "float32")
    >>> y = rowwise_spectral_matmul(np.ones((6, 4), "float32"), table,
    ...                             np.array([0, 1, 1]), plan, (4, 5), 1.0)
    """
    d1, d2 = int(shape[0]), int(shape[1])
    x_real, x_imag = _rfft(ops.cast(inputs, "float32"))
    real, imag = _gather_conjugate(x_real, x_imag, plan, "forward_")
    n, tokens = ops.shape(real)[0], ops.shape(real)[1]
    batch = ops.shape(row_ids)[0]
    # `(n, batch, 1)`: each batch row's coefficients, for all its tokens.
    weights = ops.take(ops.cast(table, "float32"), row_ids, axis=0)
    weights = ops.expand_dims(ops.transpose(weights), 2)
    grouped = (n, batch, tokens // batch)
    real = ops.reshape(ops.reshape(real, grouped) * weights, (n, tokens))
    imag = ops.reshape(ops.reshape(imag, grouped) * weights, (n, tokens))
    return _scatter_inverse(real, imag, plan, "forward_", d2, scaling / d1)


# Costs of the two ways to apply the update, in units of one multiply-add of
# the weight-gradient matmul, fitted to `benchmarks/adapter_layer.py` (JAX;
# on a 2-core CPU and on an H200 GPU: 384x384 to 4096x11008, 512 to 4,096
# tokens, `benchmarks/results/adapter_layer_jax_*.json`; see
# benchmarks/RESULTS.md and tests/test_spectral.py, which checks the choice
# against those measurements). `dense` pays the weight gradient
# `x^T g` (tokens * d1 * d2) plus 2-D FFTs of the weight; `activation` pays
# per token an FFT of each row (forward and backward) and the gather/scatter
# of the n coefficients. On a GPU matmuls are so much faster than gathers
# and scatters that the dense path wins at large token counts.
_COSTS = {
    "cpu": {"fft": 95.0, "coefficient": 570.0, "weight_fft": 46.0},
    "gpu": {"fft": 100.0, "coefficient": 45_000.0, "weight_fft": 300.0},
}
# Tokens assumed when a call's batch size is unknown at trace time
# (TensorFlow's `fit` traces with a dynamic batch): a typical sequence.
_UNKNOWN_TOKENS = 512


@functools.cache
def device_kind(backend=None):
    """`"gpu"` if the backend computes on an accelerator, else `"cpu"`.

    Args:
        backend: Backend name, default the current one.

    Returns:
        `"gpu"` or `"cpu"`.
    """
    backend = backend or keras.backend.backend()
    if backend == "jax":
        import jax

        return "cpu" if jax.default_backend() == "cpu" else "gpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return "cpu"


def choose_compute(
    tokens,
    in_features,
    out_features,
    n_frequency,
    backend=None,
    device=None,
    in_compiled_loop=False,
):
    """Picks `"dense"` or `"activation"` for a layer call from static shapes.

    Args:
        tokens: Integer or None, the number of input rows of the call
            (batch times sequence); None (unknown until run time) counts as
            512.
        in_features: Integer `d1`.
        out_features: Integer `d2`.
        n_frequency: Integer `n`.
        backend: Backend name, default the current one (its device, CPU or
            GPU, selects the cost constants).
        device: `"cpu"` or `"gpu"` to select the cost constants directly,
            default the backend's device.
        in_compiled_loop: Boolean, the call is one step of a loop compiled
            as one program that computes loop-invariant values once (JAX's
            cached decoding in `generate`): `delta_W` is then built once per
            loop, so the dense path costs what the merged layer costs and is
            chosen.

    Returns:
        `"dense"` or `"activation"`.

    Example:

    >>> choose_compute(512, 4096, 4096, 1000)
    'activation'
    """
    device = device or device_kind(backend)
    if in_compiled_loop:
        return "dense"
    if device not in _COSTS:
        raise ValueError(f"device={device!r}, expected one of {sorted(_COSTS)}.")
    costs = _COSTS[device]
    d1, d2, n = int(in_features), int(out_features), int(n_frequency)
    per_token_dense = d1 * d2
    per_token_activation = (
        costs["fft"] * (d1 * math.log2(max(d1, 2)) + d2 * math.log2(max(d2, 2)))
        + costs["coefficient"] * n
    )
    fixed_dense = costs["weight_fft"] * d1 * d2 * math.log2(max(d1 * d2, 2))
    tokens = _UNKNOWN_TOKENS if tokens is None else int(tokens)
    dense = tokens * per_token_dense + fixed_dense
    activation = tokens * per_token_activation
    return "activation" if activation < dense else "dense"
