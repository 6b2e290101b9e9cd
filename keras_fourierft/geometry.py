"""The 2-D geometry of a kernel: its `(input, output)` view and row layout.

FourierFT works on a 2-D view of every kernel, `d1` input features by `d2`
output features (`kernel_view`). An `EinsumDense` call is brought to that
view by moving its input to `(tokens, d1)` rows and the update back
(`RowLayout`). Nothing here holds state.
"""

import functools
import math

import keras
from keras import ops

from keras_fourierft import keras_internals


def kernel_view(layer_or_equation, kernel_shape):
    """Describes the 2-D `(input features, output features)` view of a kernel.

    A `Dense` kernel is already `(input, output)`. For an `EinsumDense` the
    kernel axes that also appear in the input term are input features, those
    that also appear in the output term are output features; each group is
    flattened in the kernel's own axis order. For Keras's attention layers
    this equals the transposed weight of the matching Hugging Face
    `nn.Linear`, e.g. BERT's query `(hidden, heads, head_dim)` gives
    `hidden x heads*head_dim`, Gemma's query `(heads, hidden, head_dim)` gives
    `hidden x heads*head_dim`.

    Args:
        layer_or_equation: A `Dense` layer, an `EinsumDense` layer, or an
            einsum equation string such as `"abc,cde->abde"` (None for a
            `Dense` kernel).
        kernel_shape: Tuple, the kernel's shape.

    Returns:
        A dict with `input_axes`, `output_axes` (kernel axis indices),
        `in_features`, `out_features` (integers) and `permutation` (the kernel
        axis order that puts input axes first).

    Example:

    >>> kernel_view("btd,ndh->btnh", (12, 768, 64))["in_features"]
    768
    """
    equation = layer_or_equation
    if isinstance(layer_or_equation, keras.layers.Layer):
        equation = getattr(layer_or_equation, "equation", None)
    kernel_shape = tuple(int(d) for d in kernel_shape)
    if equation is None:
        input_axes, output_axes = [0], [1]
    else:
        input_axes, output_axes = _einsum_feature_axes(equation)
    if len(input_axes) + len(output_axes) != len(kernel_shape):
        raise ValueError(
            f"Kernel shape {kernel_shape} does not match the equation {equation!r}."
        )
    return {
        "input_axes": input_axes,
        "output_axes": output_axes,
        "in_features": math.prod(kernel_shape[i] for i in input_axes),
        "out_features": math.prod(kernel_shape[i] for i in output_axes),
        "permutation": input_axes + output_axes,
    }


def split_equation(equation):
    try:
        operands, output = equation.replace(" ", "").split("->")
        input_term, kernel_term = operands.split(",")
    except ValueError:
        raise ValueError(
            f"Cannot read the einsum equation {equation!r}: expected the form "
            "'<input>,<kernel>-><output>'."
        ) from None
    return input_term, kernel_term, output


def _einsum_feature_axes(equation):
    input_term, kernel_term, output = split_equation(equation)
    input_term = input_term.replace("...", "")
    output = output.replace("...", "")
    input_axes, output_axes = [], []
    for axis, letter in enumerate(kernel_term):
        in_input, in_output = letter in input_term, letter in output
        if in_input and not in_output:
            input_axes.append(axis)
        elif in_output and not in_input:
            output_axes.append(axis)
        else:
            raise ValueError(
                f"FourierFT needs every kernel axis of the einsum equation "
                f"{equation!r} to be either an input feature axis (shared with "
                "the input only) or an output feature axis (shared with the "
                f"output only); axis {letter!r} is neither."
            )
    if not input_axes or not output_axes:
        raise ValueError(
            f"The einsum equation {equation!r} has no input or no output "
            "feature axis in its kernel; FourierFT needs both."
        )
    for letter in input_term:
        if letter not in kernel_term and letter not in output:
            raise ValueError(
                f"The einsum equation {equation!r} sums over input axis "
                f"{letter!r}, which is not a kernel axis; FourierFT cannot "
                "apply its update to such a layer."
            )
    return input_axes, output_axes


class RowLayout:
    """Moves an einsum input to `(tokens, d1)` rows and `(tokens, d2)` back.

    Token axes are the input axes that are not kernel axes; features are
    flattened in the kernel's axis order, as `kernel_view` does.
    """

    def __init__(self, equation, kernel_shape, rank):
        input_term, kernel_term, output = split_equation(equation)
        if "..." in input_term:
            extra = rank - len(input_term.replace("...", ""))
            fill = "".join(chr(ord("A") + i) for i in range(extra))
            input_term = input_term.replace("...", fill)
            output = output.replace("...", fill)
        tokens = [letter for letter in input_term if letter not in kernel_term]
        features_in = [letter for letter in kernel_term if letter in input_term]
        features_out = [letter for letter in kernel_term if letter in output]
        sizes = dict(zip(kernel_term, kernel_shape, strict=True))
        self.input_permutation = [
            input_term.index(letter) for letter in tokens + features_in
        ]
        self.token_axes = [input_term.index(letter) for letter in tokens]
        self.token_count = len(tokens)
        self.output_sizes = [sizes[letter] for letter in features_out]
        current = tokens + features_out
        self.output_permutation = [current.index(letter) for letter in output]

    def to_rows(self, inputs, in_features):
        x = _transpose(inputs, self.input_permutation)
        token_shape = ops.shape(x)[: self.token_count]
        return ops.reshape(x, (-1, in_features)), token_shape

    def from_rows(self, rows, token_shape):
        y = ops.reshape(rows, tuple(token_shape) + tuple(self.output_sizes))
        return _transpose(y, self.output_permutation)


@functools.cache
def row_layout(equation, kernel_shape, rank):
    # Cached: on eager backends every call asks for it.
    return RowLayout(equation, kernel_shape, rank)


def _transpose(x, permutation):
    if list(permutation) == sorted(permutation):
        return x
    return ops.transpose(x, permutation)


def float_kernel_shape(layer):
    """The shape of a layer's kernel in float, also when it is quantized.

    Args:
        layer: A built `Dense` or `EinsumDense`.

    Returns:
        A tuple of integers.
    """
    if isinstance(layer, keras.layers.EinsumDense):
        shape = getattr(layer, "original_kernel_shape", None)
        if shape is not None:
            return tuple(int(d) for d in shape)
    elif layer.quantization_mode == "int4":
        return (int(keras_internals.kernel_variable(layer).shape[0]), int(layer.units))
    return tuple(int(d) for d in keras_internals.kernel_variable(layer).shape)


def check_size(layer, n_frequency, kernel_shape=None):
    """Raises if `n_frequency` coefficients do not fit a layer's weight.

    Args:
        layer: A `Dense` or `EinsumDense` (built, or with `kernel_shape`).
        n_frequency: Integer, the number of coefficients.
        kernel_shape: Optional tuple; default the layer's float kernel shape.
    """
    if kernel_shape is None:
        kernel_shape = float_kernel_shape(layer)
    view = kernel_view(getattr(layer, "equation", None), kernel_shape)
    size = view["in_features"] * view["out_features"]
    if n_frequency > size:
        raise ValueError(
            f"n_frequency={n_frequency} does not fit layer {layer.name!r}: its "
            f"{view['in_features']}x{view['out_features']} weight has {size} "
            "entries. Use at most that many frequencies for this layer."
        )


def plain_input_shape(layer):
    """The input shape that builds a plain copy of a built layer.

    Args:
        layer: A built `Dense` or `EinsumDense`.

    Returns:
        A tuple, None for the batch and token axes.
    """
    kernel_shape = float_kernel_shape(layer)
    equation = getattr(layer, "equation", None)
    if equation is None:
        return (None, kernel_shape[0])
    input_term, kernel_term, _ = split_equation(equation)
    named = input_term.replace("...", "")
    # The ellipsis stands for as many axes as the layer was built with.
    rank = getattr(layer.input_spec, "ndim", None) or len(named) + 1
    shape = []
    for letter in input_term.replace("...", "." * (rank - len(named))):
        axis = kernel_term.find(letter)
        shape.append(kernel_shape[axis] if axis >= 0 else None)
    return tuple(shape)
