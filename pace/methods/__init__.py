"""Methods: PACE and its baselines, each composed from backbone, PEFT, head and loss parts.

Importing this package registers every built-in method (name -> config class + learner class).
"""

import importlib

for _mod in ("simplecil", "joint", "ranpac", "acl", "sequential_lora", "pace",
             "l2p", "dualprompt", "codaprompt", "sprompt", "hideprompt"):
    try:
        importlib.import_module(f"pace.methods.{_mod}")
    except ModuleNotFoundError as _exc:  # a method module not written yet
        if _exc.name != f"pace.methods.{_mod}":
            raise
