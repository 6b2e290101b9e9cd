"""FourierFT for Keras: parameter-efficient fine-tuning in the spectral domain."""

from keras_fourierft.layers import FourierDense
from keras_fourierft.layers import kernel_view
from keras_fourierft.spectral import frequency_locations
from keras_fourierft.spectral import spectral_delta
from keras_fourierft.version import __version__
