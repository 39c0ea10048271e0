"""Networks: ``resnet`` (ResNet-50 backbone + attribute head) and ``autoencoder`` (patch autoencoder)."""
