"""The i-RevNet model class and its Keras-Applications-style constructors."""

from keras_irevnet.models.applications import IRevNetBijective, IRevNetCIFAR, IRevNetInjective
from keras_irevnet.models.block_stack import BlockStack
from keras_irevnet.models.inverse_model import InverseModel
from keras_irevnet.models.irevnet import IRevNet
from keras_irevnet.models.model_file import load_irevnet

__all__ = [
    "BlockStack",
    "IRevNet",
    "IRevNetBijective",
    "IRevNetCIFAR",
    "IRevNetInjective",
    "InverseModel",
    "load_irevnet",
]
