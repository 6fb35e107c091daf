"""Audio backbones behind one interface (see base.Backbone) and a registry of named builds."""

from pace.backbones.base import Backbone, BackboneOutput
from pace.backbones.registry import BackboneSpec, build_backbone, list_backbones, register

__all__ = ["Backbone", "BackboneOutput", "BackboneSpec", "build_backbone", "list_backbones", "register"]
