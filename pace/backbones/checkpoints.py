"""``backbone.checkpoint``: a local file or folder, or a hub id found in the local Hugging Face cache.

Shared by the EAT loader (a weight file, or a folder holding one) and the transformers families (a
``save_pretrained`` folder). pace never downloads: a hub id that is not already cached is an error
whose text, given by the caller, says how to fetch the weights elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path

#: ``owner/name`` or ``owner/name/path/in/repo``
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/.+)?$")


def resolve_checkpoint(spec: str | Path, how_to_get: str, *, what: str = "backbone.checkpoint",
                       need_folder: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """The local file or folder ``spec`` names (``~`` expanded, otherwise as given), or its snapshot in
    the local HF cache when it is a hub id (``owner/name`` -> the snapshot folder; ``owner/name/file``
    -> that file).

    ``how_to_get`` ends the not-found error; ``{repo}`` in it becomes the hub repo. ``need_folder``:
    the caller reads folders only, and this text says what the folder must hold (a file is then an
    error). ``what`` names the setting in messages.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        if need_folder:
            raise ValueError(f"{what} {str(spec)!r} is a file; {need_folder}")
        return path
    match = _HUB_ID.match(spec) if isinstance(spec, str) else None
    if match is None or (need_folder and match[1]):
        raise FileNotFoundError(f"{what} {str(spec)!r}: no such file or folder, and pace never downloads. "
                                + how_to_get.replace("{repo}", "OWNER/NAME"))
    found = _from_hf_cache(spec, cache_dir)
    if found is None:
        repo = "/".join(spec.split("/", 2)[:2])
        raise FileNotFoundError(
            f"{what} {spec!r} is neither a local file or folder nor in the local Hugging Face cache, and "
            "pace never downloads. " + how_to_get.replace("{repo}", repo))
    return found


def _from_hf_cache(spec: str, cache_dir: str | Path | None) -> Path | None:
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    owner, name, *rest = spec.split("/", 2)
    repo = f"{owner}/{name}"
    if rest:
        found = try_to_load_from_cache(repo, rest[0], cache_dir=cache_dir)
        return Path(found) if isinstance(found, str) else None  # None or the "known missing" sentinel
    try:
        return Path(snapshot_download(repo, local_files_only=True, cache_dir=cache_dir))
    except (OSError, ValueError):  # LocalEntryNotFoundError and invalid ids are both
        return None
