"""`FourierFTConfig`: the settings of one FourierFT adapter, checked once."""

import dataclasses
import math
import numbers
import warnings

import numpy as np

SAMPLINGS = ("uniform", "frequency_biased")
COMPUTE_MODES = ("auto", "dense", "activation")
INITIALIZERS = ("normal", "zeros")
DEFAULT_LR_MULTIPLIER = 30.0

# The fields that define an adapter's spectrum: two adapters with equal
# values here (and equal 2-D shapes) place their coefficients identically.
SPECTRUM_FIELDS = (
    "n_frequency",
    "scaling",
    "seed",
    "sampling",
    "center_frequency",
    "bandwidth",
)


@dataclasses.dataclass(frozen=True)
class FourierFTConfig:
    """The settings of a FourierFT adapter, validated on creation.

    One object carries them everywhere: the layers, `enable_fourierft`,
    adapter files, PEFT folders and `.keras` files, so each setting is
    checked in one place.

    Args:
        n_frequency: Positive integer, the number of trainable spectral
            coefficients per adapted layer.
        scaling: Finite float, the factor `alpha` of the update.
        seed: Integer in `[0, 2**32)`, the seed of the frequency locations
            (PEFT's `random_loc_seed`).
        sampling: `"uniform"` (PEFT's) or `"frequency_biased"` (paper Eq. 5).
        center_frequency: Non-negative float, `f_c` for frequency-biased
            sampling.
        bandwidth: Positive float, `W` for frequency-biased sampling.
        coefficient_initializer: `"normal"` (N(0, 1), PEFT's and the paper's
            default) or `"zeros"` (start from the pretrained function).
        lr_multiplier: Positive finite float: the variable stores
            `spectrum / lr_multiplier`, which multiplies the coefficients'
            effective learning rate under Adam-family optimizers.
        compute_path: `"auto"`, `"dense"` or `"activation"`: how a layer
            applies the update (see `FourierDense`).
        compute: Deprecated name of `compute_path` (a `DeprecationWarning`).

    Example:

    >>> config = FourierFTConfig(n_frequency=1000, scaling=150.0)
    >>> config.to_dict()["n_frequency"]
    1000
    """

    n_frequency: int = 1000
    scaling: float = 150.0
    seed: int = 777
    sampling: str = "uniform"
    center_frequency: float | None = None
    bandwidth: float | None = None
    coefficient_initializer: str = "normal"
    lr_multiplier: float = DEFAULT_LR_MULTIPLIER
    compute_path: str = "auto"
    compute: dataclasses.InitVar[str | None] = None

    def __post_init__(self, compute):
        set_ = object.__setattr__
        if compute is not None:
            if self.compute_path not in ("auto", compute):
                raise ValueError(
                    f"Pass one of `compute_path` and `compute` (its deprecated "
                    f"name). Received: compute_path={self.compute_path!r}, "
                    f"compute={compute!r}"
                )
            warnings.warn(
                "The FourierFT setting `compute` is renamed `compute_path`; "
                "pass `compute_path=` instead.",
                DeprecationWarning,
                stacklevel=3,
            )
            set_(self, "compute_path", compute)
        set_(
            self, "n_frequency", check_positive_integer("n_frequency", self.n_frequency)
        )
        set_(self, "scaling", check_finite("scaling", self.scaling))
        set_(self, "seed", check_seed(self.seed))
        set_(self, "sampling", _choice("sampling", self.sampling, SAMPLINGS))
        set_(
            self,
            "compute_path",
            _choice("compute_path", self.compute_path, COMPUTE_MODES),
        )
        set_(
            self,
            "coefficient_initializer",
            _choice(
                "coefficient_initializer", self.coefficient_initializer, INITIALIZERS
            ),
        )
        multiplier = check_finite("lr_multiplier", self.lr_multiplier)
        if multiplier <= 0:
            raise ValueError(f"lr_multiplier={self.lr_multiplier!r}, not positive")
        set_(self, "lr_multiplier", multiplier)
        if self.sampling == "frequency_biased":
            center = check_finite("center_frequency", self.center_frequency)
            width = check_finite("bandwidth", self.bandwidth)
            if center < 0 or width <= 0:
                raise ValueError(
                    "Frequency-biased sampling needs center_frequency >= 0 and "
                    f"bandwidth > 0. Received: center_frequency={center}, "
                    f"bandwidth={width}"
                )
            set_(self, "center_frequency", center)
            set_(self, "bandwidth", width)
        else:
            set_(self, "center_frequency", None)
            set_(self, "bandwidth", None)

    def replace(self, **changes):
        """Returns a copy with some fields changed (validated again).

        Args:
            **changes: Field values to change.

        Returns:
            A new `FourierFTConfig`.
        """
        return dataclasses.replace(self, **changes)

    def spectrum_key(self):
        """The fields that decide where coefficients go, as a tuple."""
        return tuple(getattr(self, name) for name in SPECTRUM_FIELDS)

    def to_dict(self):
        """Returns the settings as a JSON-compatible dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="config"):
        """Builds a config from a dict, refusing unknown or invalid fields.

        Args:
            values: A dict of settings (e.g. read from a file).
            source: How error messages name where the dict came from.

        Returns:
            A `FourierFTConfig`.
        """
        if not isinstance(values, dict):
            raise ValueError(
                f"{source}: expected a dict of FourierFT settings, got "
                f"{type(values).__name__}."
            )
        if "compute" in values and "compute_path" not in values:
            # Files written before `compute` was renamed.
            values = dict(values)
            values["compute_path"] = values.pop("compute")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown FourierFT settings {unknown}.")
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(
        value, (bool, np.bool_)
    )


def check_integer(name, value):
    """Returns `value` as an int, or raises if it is not an integer.

    Booleans are refused; numpy integers are accepted.

    Args:
        name: The setting's name, for the message.
        value: The value to check.

    Returns:
        An int.
    """
    if not _is_integer(value):
        raise ValueError(f"{name}={value!r}, not an integer")
    return int(value)


def check_positive_integer(name, value):
    """Returns `value` as an int, or raises if it is not a positive integer.

    Args:
        name: The setting's name, for the message.
        value: The value to check.

    Returns:
        An int.
    """
    if not _is_integer(value) or value < 1:
        raise ValueError(f"{name}={value!r}, not a positive integer")
    return int(value)


def check_finite(name, value):
    """Returns `value` as a float, or raises if it is not a finite number.

    Args:
        name: The setting's name, for the message.
        value: The value to check.

    Returns:
        A float.
    """
    is_real = isinstance(value, numbers.Real) and not isinstance(
        value, (bool, np.bool_)
    )
    if not is_real or not math.isfinite(value):
        raise ValueError(f"{name}={value!r}, not a finite number")
    return float(value)


def check_seed(value):
    """Returns a location seed as an int, or raises if not in `[0, 2**32)`.

    Args:
        value: The seed to check.

    Returns:
        An int.
    """
    seed = check_integer("seed", value)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed={value!r}, not in [0, 2**32)")
    return seed


def _choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}. Received: {value!r}")
    return value
