"""Parameter-efficient fine-tuning: per-session LoRA with subtraction, and subspace projection."""

from pace.peft.lora import LoRALinear, LoRAManager
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
    "LoRALinear",
    "LoRAManager",
    "collect_input_covariances",
    "energy_basis",
    "energy_spectrum",
    "subspace_bases",
]
