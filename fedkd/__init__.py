"""fedkd: federated knowledge distillation with secure aggregation, on Flower and PyTorch."""

__version__ = "0.1.0"
