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
