"""Searched keys and the define-by-run search space of a sweep.

A ``Param`` is one searched dotted config key; ``when`` makes it conditional. ``SearchSpace`` samples
the params in dependency order through an Optuna-style trial (Optuna's own, Ray's captor, or
``RandomTrial``), enumerates them as a grid, and lists the probe points the up-front check validates.
"""

from __future__ import annotations

import math
import random
from typing import Any, Literal

from pydantic import Field, model_validator

from pace.config import Strict, compose, get_dotted, validate_config
from pace.study import SpecError

#: refuse to enumerate grids larger than this (a typo in a step, most likely)
MAX_GRID = 20_000

Scalar = bool | int | float | str | None

_MISSING = object()


class Param(Strict):
    """One searched key. ``when`` makes it conditional: it is only sampled (and set) when every listed
    key has the given value (or one of the listed values)."""

    type: Literal["float", "log", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    values: list[Scalar] | None = None
    step: float | None = None
    when: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_range(self) -> "Param":
        if self.type == "categorical":
            if not self.values:
                raise ValueError("categorical needs a non-empty 'values' list")
            if self.low is not None or self.high is not None or self.step is not None:
                raise ValueError("categorical takes 'values', not low/high/step")
            if len(set(map(repr, self.values))) != len(self.values):
                raise ValueError(f"categorical values repeat: {self.values}")
            return self
        if self.values is not None:
            raise ValueError(f"{self.type} takes low/high (use type: categorical for a list of values)")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs both 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be < high ({self.high:g})")
        if self.type == "log":
            if self.low <= 0:
                raise ValueError(f"log needs low > 0 (got {self.low:g})")
            if self.step is not None:
                raise ValueError("log does not take a step (Optuna samples log ranges continuously)")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"int needs integer bounds (got {self.low:g}, {self.high:g})")
        if self.step is not None:
            if self.step <= 0:
                raise ValueError(f"step must be > 0 (got {self.step:g})")
            if self.type == "int" and self.step != int(self.step):
                raise ValueError(f"int needs an integer step (got {self.step:g})")
        return self

    def grid_values(self, key: str) -> list[Any]:
        if self.type == "categorical":
            return list(self.values)
        if self.type == "log" or (self.type == "float" and self.step is None):
            raise SpecError(f"search[{key!r}]: a grid needs finite values; use type: categorical, "
                            "or a float/int with a step")
        step = self.step or 1
        n = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        vals = [self.low + i * step for i in range(n)]
        return [int(round(v)) for v in vals] if self.type == "int" else [round(v, 12) for v in vals]

    def probe_values(self) -> list[Any]:
        """Bounds (and the middle) or every categorical value: what the up-front check validates."""
        if self.type == "categorical":
            return list(self.values)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        mid = math.sqrt(self.low * self.high) if self.type == "log" else (self.low + self.high) / 2
        return [self.low, mid, self.high]

    def suggest(self, trial: Any, key: str) -> Any:
        """Sample through an Optuna-style trial (Optuna's own, Ray's captor, or ``RandomTrial``)."""
        if self.type == "categorical":
            return trial.suggest_categorical(key, list(self.values))
        if self.type == "int":
            return trial.suggest_int(key, int(self.low), int(self.high), step=int(self.step or 1))
        if self.type == "log":
            return trial.suggest_float(key, self.low, self.high, log=True)
        return trial.suggest_float(key, self.low, self.high, step=self.step)


def _condition_holds(when: dict[str, Any], sampled: dict[str, Any], base: dict[str, Any],
                     defaults: dict[str, Any]) -> bool:
    for key, want in when.items():
        if key in sampled:
            have = sampled[key]
        else:
            have = get_dotted(compose(base, sampled), key, _MISSING)
            have = get_dotted(defaults, key) if have is _MISSING else have
        if isinstance(want, list) and not isinstance(have, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


class SearchSpace:
    """A define-by-run space: ``space(trial)`` samples the params in dependency order.

    Picklable (Tune stores the searcher with the experiment so ``Tuner.restore`` can go on sampling).
    """

    def __init__(self, params: dict[str, Param], base: dict[str, Any]):
        self.params = params
        self.base = base
        #: resolved defaults, for conditions on keys the base leaves unset
        self.defaults = validate_config(base).to_dict()
        self.order = self._order(params)

    @staticmethod
    def _order(params: dict[str, Param]) -> list[str]:
        order: list[str] = []
        pending = dict(params)
        while pending:
            ready = [k for k, p in pending.items() if all(c not in pending for c in p.when)]
            if not ready:
                raise SpecError(f"search: conditions form a cycle among {', '.join(pending)}")
            for k in ready:
                order.append(k)
                del pending[k]
        return order

    def __call__(self, trial: Any) -> None:
        self.sample(trial)
        return None  # Ray's captor records what was suggested, in this order

    def sample(self, trial: Any) -> dict[str, Any]:
        """The overrides one trial gets (in dependency order)."""
        sampled: dict[str, Any] = {}
        for key in self.order:
            p = self.params[key]
            if _condition_holds(p.when, sampled, self.base, self.defaults):
                sampled[key] = p.suggest(trial, key)
        return sampled

    def grid(self) -> list[dict[str, Any]]:
        """Every combination, conditional params expanded only where their condition holds."""
        combos: list[dict[str, Any]] = [{}]
        for key in self.order:
            p = self.params[key]
            values = p.grid_values(key)
            nxt = []
            for c in combos:
                if _condition_holds(p.when, c, self.base, self.defaults):
                    nxt += [{**c, key: v} for v in values]
                else:
                    nxt.append(c)
            combos = nxt
            if len(combos) > MAX_GRID:
                raise SpecError(f"search: the grid has more than {MAX_GRID} points; coarsen the steps")
        return combos

    def probes(self) -> list[dict[str, Any]]:
        """Each param at each probe value, with its conditions (and theirs) made true."""
        out = []
        for key in self.order:
            p = self.params[key]
            for v in p.probe_values():
                forced: dict[str, Any] = {}
                stack = dict(p.when)
                while stack:
                    ck, cv = stack.popitem()
                    forced[ck] = cv[0] if isinstance(cv, list) else cv
                    if ck in self.params:
                        stack.update({k: w for k, w in self.params[ck].when.items() if k not in forced})
                ordered = {k: forced[k] for k in self.order if k in forced}
                ordered.update({k: v for k, v in forced.items() if k not in ordered})
                ordered[key] = v
                out.append(ordered)
        return out

    def random_sample(self, seed: int) -> dict[str, Any]:
        """One seeded random draw (no Optuna needed): the up-front check's spread over the space."""
        return self.sample(RandomTrial(random.Random(seed)))


class RandomTrial:
    """Just enough of Optuna's trial interface to sample a space with a seeded ``random.Random``."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def suggest_categorical(self, name, choices):
        return self.rng.choice(choices)

    def suggest_int(self, name, low, high, step=1):
        return low + step * self.rng.randint(0, (high - low) // step)

    def suggest_float(self, name, low, high, *, step=None, log=False):
        if log:
            return math.exp(self.rng.uniform(math.log(low), math.log(high)))
        if step:
            return low + step * self.rng.randint(0, int(math.floor((high - low) / step + 1e-9)))
        return self.rng.uniform(low, high)
