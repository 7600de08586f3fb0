"""Training from scratch with sine low-rank layers: converting architectures, neural fields, and
initialised checkpoints."""

from .convert import convert, convert_convnext, convert_vit, count_params, select_layers
from .fields import CoordinateMLP, FourierEncoding, Gaussian
from .init_checkpoint import convert_timm, load_init, read_init

__all__ = ["convert", "convert_vit", "convert_convnext", "count_params", "select_layers",
           "CoordinateMLP", "FourierEncoding", "Gaussian", "convert_timm", "load_init", "read_init"]
