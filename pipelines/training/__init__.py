"""Training of the shipped networks (``lungscreen train``): the nodule UNet, then the false-positive classifier."""
