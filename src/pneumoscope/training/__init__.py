"""Training: a LightningModule, Keras-style stage callbacks, and the multi-stage driver."""

from .run import TrainResult, train

__all__ = ["TrainResult", "train"]
