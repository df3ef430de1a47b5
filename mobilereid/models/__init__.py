"""Model registry: presets as thin factory configs, one `build_model` entry point, checkpoint I/O."""

from .registry import PRESETS, build_from_config, build_model, model_family  # noqa: F401
