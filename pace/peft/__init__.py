"""Parameter-efficient fine-tuning: per-session LoRA with subtraction, and subspace projection."""

from pace.peft.lora import LoRALinear, LoRAManager
from pace.peft.lora_conv import LoRAConv  # also registers it as the wrapper of Conv1d/Conv2d
from pace.peft.projection import (
    CovarianceAccumulator,
    GradientProjector,
    collect_input_covariances,
    energy_basis,
    energy_spectrum,
    subspace_bases,
)

__all__ = [
    "CovarianceAccumulator",
    "GradientProjector",
    "LoRAConv",
    "LoRALinear",
    "LoRAManager",
    "collect_input_covariances",
    "energy_basis",
    "energy_spectrum",
    "subspace_bases",
]
