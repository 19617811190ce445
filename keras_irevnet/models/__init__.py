"""The i-RevNet model class and its Keras-Applications-style constructors."""

from keras_irevnet.models.applications import IRevNetBijective, IRevNetCIFAR, IRevNetInjective
from keras_irevnet.models.block_stack import BlockStack
from keras_irevnet.models.inverse_model import InverseModel
from keras_irevnet.models.irevnet import IRevNet

__all__ = ["BlockStack", "IRevNet", "IRevNetBijective", "IRevNetCIFAR", "IRevNetInjective", "InverseModel"]
