"""Stage reuse: a learner stage's outcome is stored under a key of every input that decides it.

Trials of a study that differ only downstream of an expensive stage (PACE variants that change MSA,
the projection or the analytic head; RanPAC variants that change the ridge) then load the stage's
outcome instead of recomputing it. A key that misses an input is a silent wrong result, so the key
is built by exclusion: the method's whole resolved config enters it except the fields the learner
declares downstream of the stage (``Learner.STAGE_DOWNSTREAM``), together with

- the run context: backbone identity (name, pooling, frontend, sha of the exact weights before the
  stage), seeds, batch sizes, device type, bf16, thread count, torch version and a digest of pace's
  own source (any code change invalidates every entry);
- the data: clip keys, labels and a digest of the frontend features of the split the stage trains on;
- the global torch RNG states before the stage, CPU and (on a GPU) CUDA: dropout in some backbones
  draws from them.

The entry holds what the stage produced (``save()`` of ``run_stage``), the diagnostics it wrote and
the global RNG states after it; it is a checksummed cache entry (``pace.cache``), written once by one
process while concurrent trials wait. After a load, the backbone's weight digest (frozen weights and
LoRA) must equal the one the computing trial recorded. ``ctx.diagnostics["stage_reused_<stage>"]``
says per session whether the stage ran (0) or was loaded (1); the study summary counts them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch

import pace
from pace.cache import hash_tensor, tensor_digest

#: bump when the layout of a stage entry changes
STAGE_FORMAT = 1
_RECORD = "__record__"


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over pace's Python source (path and bytes, sorted): any edit gives new stage keys."""
    root = Path(pace.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def key_fields(cfg_dict: dict[str, Any], downstream: set[str] | frozenset[str]) -> dict[str, Any]:
    """The method config minus the fields downstream of a stage (top-level names)."""
    unknown = set(downstream) - set(cfg_dict)
    if unknown:  # a renamed field must not silently leave the key wider than declared
        raise ValueError(f"STAGE_DOWNSTREAM names fields the config lacks: {sorted(unknown)}")
    return {k: v for k, v in cfg_dict.items() if k not in downstream}


def default_fields(learner, stage: str) -> dict[str, Any]:
    """The learner's method config minus what it declares downstream of ``stage``."""
    downstream = getattr(learner, "STAGE_DOWNSTREAM", {}).get(stage, frozenset())
    return key_fields(learner.cfg.model_dump(mode="json"), downstream)


def _split_digest(split) -> dict[str, Any]:
    hx, hy = hashlib.sha256(), hashlib.sha256()
    for s in range(0, len(split), 256):  # the store's splits load per batch
        hash_tensor(hx, torch.as_tensor(split.x[s:s + 256]))
    hash_tensor(hy, split.y)
    return {"keys": tensor_digest(list(split.keys)), "n": len(split), "x": hx.hexdigest()[:16],
            "y": hy.hexdigest()[:16]}


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The global streams a stage may draw from: the CPU one, and the device's on CUDA (dropout there)."""
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)


def stage_key(learner, stage: str, fields: dict[str, Any], split) -> str:
    """The JSON string that names a stage's outcome (hashed by the cache into a file name)."""
    ctx, bb = learner.ctx, learner.backbone
    rng = b"".join(t.numpy().tobytes() for _, t in sorted(rng_states(ctx.device).items()))
    record = {
        "stage": stage, "format": STAGE_FORMAT, "method": learner.cfg.name, "fields": fields,
        "backbone": bb.identity(),
        "seeds": ctx.seeds.model_dump(mode="json"),
        "runtime": {"batch_size": ctx.batch_size, "eval_batch_size": ctx.eval_batch_size,
                    "device": ctx.device.type, "bf16": bool(ctx.bf16), "threads": torch.get_num_threads()},
        "torch": torch.__version__, "code": code_digest(),
        "rng": hashlib.sha256(rng).hexdigest()[:16],
        "split": _split_digest(split),
    }
    return "stage|" + json.dumps(record, sort_keys=True, default=str)


# ------------------------------------------------------------------ entry packing

def _pack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"stage state keys must be strings: {list(obj)[:5]}")
        return {k: _pack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_pack(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"stage state holds a {type(obj).__name__}; only tensors and plain containers are stored")


def _unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    return obj


def pack(record: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors plus the JSON skeleton as a uint8 tensor, so the entry's checksum covers both."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _pack(record, tensors)
    tensors[_RECORD] = torch.frombuffer(bytearray(json.dumps(skeleton).encode()), dtype=torch.uint8)
    return tensors


def unpack(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    skeleton = json.loads(bytes(tensors[_RECORD].numpy().tobytes()).decode())
    return _unpack(skeleton, tensors)


# ------------------------------------------------------------------ running a stage

def run_stage(learner, stage: str, split, compute: Callable[[], None], save: Callable[[], dict],
              load: Callable[[dict], None], fields: dict[str, Any] | None = None) -> bool:
    """Run ``compute`` (which changes the learner in place), or load its stored outcome.

    ``save()`` returns what the stage produced (tensors and plain containers), ``load(state)`` puts it
    back into a learner that has not run the stage. ``fields`` are the config fields that decide the
    stage; by default the learner's method config minus its ``STAGE_DOWNSTREAM[stage]``. Returns True
    when the outcome was loaded.
    """
    ctx = learner.ctx
    if not getattr(ctx, "reuse_stages", False) or ctx.cache is None:
        compute()
        return False
    key = stage_key(learner, stage, default_fields(learner, stage) if fields is None else fields, split)
    before = dict(ctx.diagnostics)
    computed = False

    def do() -> dict[str, torch.Tensor]:
        nonlocal computed
        computed = True
        compute()
        # what the stage wrote; another stage's own flag is not part of this outcome
        diag = {k: v for k, v in ctx.diagnostics.items()
                if not k.startswith("stage_reused_") and (k not in before or before[k] != v)}
        return pack({"state": save(), "diagnostics": diag, "rng": rng_states(ctx.device),
                     "weights_after": learner.backbone.weights_digest(), "training": learner.backbone.training})

    tensors = ctx.cache.get_or_compute(key, do, meta={"pace_stage": stage})
    if not computed:
        record = unpack(tensors)
        load(record["state"])
        # the loaded state must put the backbone (frozen weights + LoRA) exactly where the trial that
        # computed it left it; anything else is refused rather than trained on
        if learner.backbone.weights_digest() != record["weights_after"]:
            raise RuntimeError(f"stage {stage!r}: the stored outcome {ctx.cache.path(key)} does not rebuild "
                               "the backbone it was computed on; delete that entry (or set "
                               "runtime.reuse_stages: false)")
        ctx.diagnostics.update(record["diagnostics"])
        set_rng_states(record["rng"], ctx.device)
        learner.backbone.train(bool(record["training"]))
    ctx.diagnostics[f"stage_reused_{stage}"] = int(not computed)
    return not computed
