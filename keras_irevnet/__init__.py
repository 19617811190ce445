"""keras_irevnet: i-RevNet, the invertible image classifier, in Keras 3.

Jacobsen, Smeulders & Oyallon, "i-RevNet: Deep Invertible Networks", ICLR 2018.
"""

from keras_irevnet import callbacks, layers
from keras_irevnet.convert import load_official_weights
from keras_irevnet.export import export_onnx, export_saved_model
from keras_irevnet.models import (
    BlockStack,
    IRevNet,
    IRevNetBijective,
    IRevNetCIFAR,
    IRevNetInjective,
)
from keras_irevnet.preprocessing import decode_predictions, deprocess_input, preprocess_input

__version__ = "0.1.0"

__all__ = [
    "BlockStack",
    "IRevNet",
    "IRevNetBijective",
    "IRevNetCIFAR",
    "IRevNetInjective",
    "callbacks",
    "decode_predictions",
    "deprocess_input",
    "export_onnx",
    "export_saved_model",
    "layers",
    "load_official_weights",
    "preprocess_input",
]
