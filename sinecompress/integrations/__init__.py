"""Glue to other libraries (transformers quantizers). These modules import their library's heavy
machinery, so the package imports them only when they are used."""
