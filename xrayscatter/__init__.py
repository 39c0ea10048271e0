"""xrayscatter: tag x-ray scattering detector images with attributes.

Stages: simulate (synthetic images → sharded TFRecords), train (ResNet-50, patch
autoencoder), evaluate (one-vs-all linear SVMs, leave-one-run-out AP), predict.
"""

__version__ = "0.1.0"
