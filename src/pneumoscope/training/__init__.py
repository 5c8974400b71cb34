"""Training: a LightningModule, Keras-style stage callbacks, and the multi-stage driver."""

from .train import TrainResult, train

__all__ = ["TrainResult", "train"]
