"""Reading and writing checkpoints: sources, the compressed format, atomic and sharded writers."""
