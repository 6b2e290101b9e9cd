"""FourierFT for Keras: parameter-efficient fine-tuning in the spectral domain."""

from keras_fourierft.adapters import load_fourierft_weights
from keras_fourierft.adapters import save_fourierft_weights
from keras_fourierft.callbacks import FourierFTCheckpoint
from keras_fourierft.config import FourierFTConfig
from keras_fourierft.layers import FourierDense
from keras_fourierft.layers import FourierEinsumDense
from keras_fourierft.layers import adapt_layer
from keras_fourierft.layers import kernel_view
from keras_fourierft.layers import remove_adapter
from keras_fourierft.peft import load_peft_adapter
from keras_fourierft.peft import read_peft_adapter
from keras_fourierft.peft import save_peft_adapter
from keras_fourierft.saving import load_model
from keras_fourierft.spectral import frequency_locations
from keras_fourierft.spectral import spectral_delta
from keras_fourierft.surgery import FourierFTSummary
from keras_fourierft.surgery import default_target_layer_names
from keras_fourierft.surgery import enable_fourierft
from keras_fourierft.surgery import fourier_layers
from keras_fourierft.surgery import merge_fourierft
from keras_fourierft.surgery import reset_compiled_functions
from keras_fourierft.surgery import set_fourierft_enabled
from keras_fourierft.surgery import unload_fourierft
from keras_fourierft.surgery import unmerge_fourierft
from keras_fourierft.surgery import walk_layers
from keras_fourierft.version import __version__
