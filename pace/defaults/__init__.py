"""Backbone-keyed method defaults (``backbones.yaml``), applied by ``pace.config.apply_backbone_defaults``."""
