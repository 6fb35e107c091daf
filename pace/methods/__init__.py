"""Methods: PACE and its baselines, each composed from backbone, PEFT, head and loss parts.

Each method module registers its config and learner (``base.register_method``); ``pace.registry.METHODS``
imports every module of this package the first time a method is looked up.
"""
