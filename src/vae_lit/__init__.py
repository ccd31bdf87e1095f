"""vae-lit: convolutional Variational Autoencoders on image folders, with Lightning and Hydra."""

__version__ = "0.1.0"
