"""surgeon: structured pruning graph surgeon for PyTorch."""
