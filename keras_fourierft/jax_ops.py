"""JAX-specific pieces of the spectral math, used on the JAX backend.

XLA's CPU FFT runs only on row-major operands, but XLA's CPU layout
assignment does not ask for them: when a program is partitioned over
several devices (`keras.distribution.ModelParallel`, or any sharded
`jax.jit`), a collective or a sharded matmul next to an FFT can prefer a
column-major layout, which then spreads through the transposes around the
FFT to its operand, and the compiled program fails with `RET_CHECK failure
(xla/backends/cpu/runtime/fft_thunk.cc) LayoutUtil::IsMonotonicWithDim0Major`.
These FFTs pin their operand and result to the row-major layout (a copy
where XLA would have changed the layout); the values are unchanged.
`spectral` uses them on JAX on CPU. This is the only module that imports
jax.
"""

import functools

import jax


@functools.cache
def _layout_constraint():
    """JAX's `with_layout_constraint` and `Layout`, or None if unavailable."""
    try:
        from jax.experimental.layout import Layout
        from jax.experimental.layout import with_layout_constraint
    except ImportError:
        return None
    return with_layout_constraint, Layout


def can_pin_layouts():
    """Whether the installed JAX can pin array layouts.

    Returns:
        A bool.
    """
    return _layout_constraint() is not None


def row_major(x):
    """Pins a JAX array to the row-major layout inside XLA programs.

    Args:
        x: A JAX array.

    Returns:
        `x`, laid out row-major.
    """
    with_layout_constraint, layout = _layout_constraint()
    return with_layout_constraint(x, layout(tuple(range(len(x.shape)))))


def fft(x):
    """`keras.ops.fft` of a `(real, imag)` pair over the last axis, row-major.

    Args:
        x: Tuple of two float arrays of the same shape.

    Returns:
        Tuple `(real, imag)` of the transform.
    """
    real, imag = x
    result = row_major(jax.numpy.fft.fft(row_major(jax.lax.complex(real, imag))))
    return jax.numpy.real(result), jax.numpy.imag(result)


def rfft(x):
    """`keras.ops.rfft` over the last axis, row-major.

    Args:
        x: A float array.

    Returns:
        Tuple `(real, imag)` of the half spectrum.
    """
    result = row_major(jax.numpy.fft.rfft(row_major(x)))
    return jax.numpy.real(result), jax.numpy.imag(result)


def irfft(x, fft_length):
    """`keras.ops.irfft` of a `(real, imag)` pair over the last axis, row-major.

    Args:
        x: Tuple of two float arrays, the half spectrum.
        fft_length: Integer, the length of the real output.

    Returns:
        A float array.
    """
    real, imag = x
    spectrum = row_major(jax.lax.complex(real, imag))
    return row_major(jax.numpy.fft.irfft(spectrum, n=fft_length))


def spectral_matmul(inputs, spectrum, plan, shape, scaling):
    """JAX version of `spectral.spectral_matmul` (same plan, same result).

    Keeps every intermediate token-major, `(tokens, bins)`: the gathers and
    the scatter run along the last axis, so nothing between the FFTs is
    transposed. The `(n, tokens)` layout of the `keras.ops` version needs
    four transposes per direction, which XLA's CPU backend turns into
    strided loops fused with the complex arithmetic (measured at 4096 x 4096
    and 512 tokens: 20 of the 29 ms of the update's forward pass).

    Args:
        inputs: Float array of shape `(tokens, d1)`.
        spectrum: Float array of shape `(n,)`.
        plan: The dict returned by `spectral.activation_plan`.
        shape: Tuple `(d1, d2)`.
        scaling: Float, the factor `alpha`.

    Returns:
        A float32 array of shape `(tokens, d2)`.
    """
    d1, d2 = int(shape[0]), int(shape[1])
    pin = row_major if can_pin_layouts() else (lambda x: x)

    def rfft(x):
        return pin(jax.numpy.fft.rfft(pin(x)))

    def irfft(half, size):
        return pin(jax.numpy.fft.irfft(pin(half), n=size))

    @jax.custom_vjp
    def apply(x, values):
        return forward(x, values)[0]

    def forward(x, values):
        gathered = _gather_conjugate(rfft(x), plan, "forward_")
        half = _scatter(gathered * values, plan, "forward_", d2 // 2 + 1)
        return irfft(half, d2) * (scaling / d1), (gathered, values)

    def backward(saved, upstream):
        gathered, values = saved
        g = _gather_conjugate(rfft(upstream.astype("float32")), plan, "backward_")
        values_grad = jax.numpy.sum(jax.numpy.real(gathered * g), axis=0)
        half = _scatter(g * values, plan, "backward_", d1 // 2 + 1)
        inputs_grad = irfft(half, d1) * (scaling / d2)
        return inputs_grad, values_grad * (scaling / (d1 * d2))

    apply.defvjp(forward, backward)
    x = jax.numpy.asarray(inputs).astype("float32")
    return apply(x, jax.numpy.asarray(spectrum).astype("float32"))


def _gather_conjugate(spectrum, plan, prefix):
    """`conj(A[a_k])` for every coefficient, as `(tokens, n)` complex."""
    gathered = jax.numpy.take(spectrum, plan[prefix + "gather"], axis=1)
    sign = plan[prefix + "gather_sign"]
    return jax.lax.complex(jax.numpy.real(gathered), jax.numpy.imag(gathered) * sign)


def _scatter(products, plan, prefix, bins):
    """Scatters `(tokens, n)` products into a `(tokens, bins)` half spectrum."""
    entries = jax.numpy.take(products, plan[prefix + "source"], axis=1)
    # `target_sign` is +-0.5: halved, and conjugated where negative.
    sign = plan[prefix + "target_sign"]
    entries = jax.lax.complex(
        jax.numpy.real(entries) * abs(sign), jax.numpy.imag(entries) * sign
    )
    half = jax.numpy.zeros((products.shape[0], bins), entries.dtype)
    return half.at[:, plan[prefix + "target"]].add(entries, indices_are_sorted=True)
