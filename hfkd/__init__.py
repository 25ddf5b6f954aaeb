"""hfkd: knowledge distillation for image classifiers on the Hugging Face stack."""

__version__ = "0.1.0"

from . import cifar_models  # noqa: F401  (registers the CIFAR-100 zoo with timm)
from .arguments import DistillationArguments
from .losses import create_loss, list_losses, register_loss
from .trainer import DistillationTrainer

__all__ = ["DistillationArguments", "DistillationTrainer", "create_loss", "list_losses", "register_loss"]
