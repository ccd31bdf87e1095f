"""vae-lit: convolutional Variational Autoencoders on image folders, with Lightning and Hydra."""

from vae_lit.runs.resolvers import register_resolvers

__version__ = "0.1.0"

register_resolvers()  # before any config of ours is resolved: every entry point imports vae_lit
