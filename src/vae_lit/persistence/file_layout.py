"""What vae-lit's files hold, by name: the key of the run config inside a Lightning checkpoint,
and the files of a model folder (`python -m vae_lit.export`)."""

CONFIG_KEY = "vae_lit_config"  # a checkpoint's resolved run config: it alone rebuilds the model
CONFIG_FILE = "config.json"  # a model folder's resolved model and data configs
WEIGHTS_FILE = "model.safetensors"  # a model folder's weights (no pickle)
FOLDER_FORMAT = 1  # config.json's "vae_lit_format"
