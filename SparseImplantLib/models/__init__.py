"""Networks and their weights: the completion network (also used for super-resolution) and the
registry that maps model names to safetensors files."""
