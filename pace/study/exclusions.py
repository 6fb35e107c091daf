"""The axes of an ablation grid and how an ``exclude`` entry is read and shown (spec and checks share them)."""

from __future__ import annotations

from typing import Any

#: the labels every ablation trial carries, in the order of its grid
AXES = ("variant", "benchmark", "backbone", "seed")


def exclusion_values(v: Any) -> set[str]:
    """An exclusion's value(s) as labels (seeds are labelled as strings)."""
    return {str(x) for x in v} if isinstance(v, (list, tuple)) else {str(v)}


def show_exclusion(entry: dict[str, Any], with_why: bool = True) -> str:
    """An exclusion as its spec line: ``{variant: hideprompt, backbone: crepe-tiny}``."""
    def show(v: Any) -> str:
        return "[" + ", ".join(map(str, v)) + "]" if isinstance(v, (list, tuple)) else str(v)

    keys = [k for k in entry if k in AXES] + (["why"] if with_why and "why" in entry else [])
    return "{" + ", ".join(f"{k}: {show(entry[k]) if k in AXES else repr(entry[k])}" for k in keys) + "}"
