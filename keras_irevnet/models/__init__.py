"""The i-RevNet model class, its presets and Keras-Applications-style constructors."""

from keras_irevnet.models.applications import IRevNetBijective, IRevNetCIFAR, IRevNetInjective
from keras_irevnet.models.block_stack import BlockStack
from keras_irevnet.models.inverse_model import InverseModel
from keras_irevnet.models.irevnet import IRevNet
from keras_irevnet.models.model_file import load_irevnet
from keras_irevnet.models.presets import PRESETS, Preset, get_preset

__all__ = [
    "PRESETS",
    "BlockStack",
    "IRevNet",
    "IRevNetBijective",
    "IRevNetCIFAR",
    "IRevNetInjective",
    "InverseModel",
    "Preset",
    "get_preset",
    "load_irevnet",
]
