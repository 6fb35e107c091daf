"""pace: PACE (Pretrained Audio Continual Learning) and its baselines, run as sweeps on Ray."""

__version__ = "0.1.0"
