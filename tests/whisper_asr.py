"""Greedy Whisper transcription for the tests: it proves pretrained weights loaded end to end.

Only tests use it (the backbones never build Whisper's decoder). The full encoder-decoder for 30 s
input is loaded strictly from the same CTranslate2 files as the backbones (pace.backbones.whisper_files
/ whisper_convert); decoding is greedy with a KV cache, text only, no timestamps. Multilingual models
(vocabulary of 51865 or more, Whisper's own rule) are prompted for English transcription.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pace.backbones.whisper import FULL_SECONDS, SAMPLE_RATE, WhisperFrontend
from pace.backbones.whisper_convert import config_from_ct2, ct2_to_hf_state_dict, load_strict
from pace.backbones.whisper_files import WhisperFiles, packaged_files

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import WhisperForConditionalGeneration

#: vocabulary size from which a Whisper model is multilingual (English-only models have 51864)
MULTILINGUAL_VOCAB = 51865


@dataclass
class WhisperASR:
    model: "WhisperForConditionalGeneration"
    tokenizer: "Tokenizer"
    sot: int  # <|startoftranscript|>
    no_timestamps: int  # <|notimestamps|>
    eot: int  # <|endoftext|>
    prev: int | None  # <|startofprev|>: introduces an initial prompt
    task: tuple[int, ...]  # after <|startoftranscript|>: <|en|><|transcribe|> (multilingual), else none
    suppress: torch.Tensor  # (vocab,) bool: never emitted
    suppress_begin: torch.Tensor  # (vocab,) bool: not emitted as the first token either
    frontend: WhisperFrontend


def _token_id(tok: "Tokenizer", text: str, path: Path) -> int:
    i = tok.token_to_id(text)
    if i is None:
        raise ValueError(f"{path}: tokenizer has no token {text!r}")
    return i


def _suppress_masks(config_json: Path | None, vocab: int, eot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token masks from the CT2 config.json (Whisper's suppress lists), plus all special tokens."""
    opts: dict[str, Any] = json.loads(config_json.read_text()) if config_json else {}
    suppress = torch.zeros(vocab, dtype=torch.bool)
    suppress[eot + 1:] = True  # special and timestamp tokens: text-only, no-timestamp decoding
    suppress[torch.tensor(opts.get("suppress_ids", []), dtype=torch.long)] = True
    begin = suppress.clone()
    begin[torch.tensor(opts.get("suppress_ids_begin", [220, eot]), dtype=torch.long)] = True
    return suppress, begin


def load_asr(files: WhisperFiles | None = None) -> WhisperASR:
    """The full encoder-decoder for 30 s inputs, loaded strictly, plus tokenizer and decoding masks.
    ``files``: default the packaged tiny.en."""
    from tokenizers import Tokenizer
    from transformers import WhisperForConditionalGeneration

    files = files or packaged_files()
    if files.tokenizer_json is None:
        raise FileNotFoundError(f"transcription needs tokenizer.json beside {files.label}")
    ct2 = files.read()
    config = config_from_ct2(ct2)
    model = WhisperForConditionalGeneration(config)
    load_strict(model, ct2_to_hf_state_dict(ct2, files.label), files.label)
    model.eval()
    tok = Tokenizer.from_file(str(files.tokenizer_json))
    path = files.tokenizer_json
    eot = _token_id(tok, "<|endoftext|>", path)
    suppress, begin = _suppress_masks(files.config_json, config.vocab_size, eot)
    task = ((_token_id(tok, "<|en|>", path), _token_id(tok, "<|transcribe|>", path))
            if config.vocab_size >= MULTILINGUAL_VOCAB else ())
    return WhisperASR(
        model, tok, sot=_token_id(tok, "<|startoftranscript|>", path),
        no_timestamps=_token_id(tok, "<|notimestamps|>", path), eot=eot,
        prev=tok.token_to_id("<|startofprev|>"), task=task, suppress=suppress, suppress_begin=begin,
        frontend=WhisperFrontend(seconds=FULL_SECONDS),
    )


def _prefix(asr: WhisperASR, prompt: str | None) -> list[int]:
    """[<|startofprev|> prompt] <|startoftranscript|> [<|en|><|transcribe|>] <|notimestamps|>: English,
    no timestamps (the language and task tokens only for a multilingual model)."""
    head: list[int] = []
    if prompt:
        if asr.prev is None:
            raise ValueError("this tokenizer has no <|startofprev|> token, so it cannot take a prompt")
        head = [asr.prev, *asr.tokenizer.encode(prompt, add_special_tokens=False).ids]
    return head + [asr.sot, *asr.task, asr.no_timestamps]


def _greedy(asr: WhisperASR, feats: torch.Tensor, prefix: list[int], max_new_tokens: int) -> list[list[int]]:
    """Greedy decoding of a batch of (B, frames, mels) features with a KV cache."""
    from transformers import DynamicCache, EncoderDecoderCache

    model = asr.model
    enc = model.model.encoder(feats.transpose(1, 2)).last_hidden_state
    n = feats.shape[0]
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    step_ids = torch.tensor([prefix]).repeat(n, 1)
    done = torch.zeros(n, dtype=torch.bool)
    out: list[list[int]] = [[] for _ in range(n)]
    for step in range(max_new_tokens):
        h = model.model.decoder(input_ids=step_ids, encoder_hidden_states=enc, cache=cache, use_cache=True)
        logits = model.proj_out(h.last_hidden_state[:, -1])
        logits = logits.masked_fill(asr.suppress_begin if step == 0 else asr.suppress, float("-inf"))
        nxt = logits.argmax(dim=-1).masked_fill(done, asr.eot)
        done |= nxt == asr.eot
        for i in torch.nonzero(~done).flatten().tolist():
            out[i].append(int(nxt[i]))
        if bool(done.all()):
            break
        step_ids = nxt[:, None]
    return out


def prepare_clip(wave: torch.Tensor | np.ndarray, peak: float | None = None,
                 lead_seconds: float = 0.0) -> torch.Tensor:
    """Optional conditioning for very short, tightly cut clips (e.g. single spoken words).

    ``peak`` rescales the clip to that peak amplitude (Whisper's log-mel is level-dependent, and quiet
    recordings sit far below its training level); ``lead_seconds`` prepends silence, because words cut
    right at their onset are often misheard.
    """
    w = torch.as_tensor(wave, dtype=torch.float32).reshape(-1)
    top = w.abs().max()
    if peak is not None and top > 0:
        w = w * (peak / top)
    return F.pad(w, (round(lead_seconds * SAMPLE_RATE), 0))


@torch.inference_mode()
def transcribe(waves: Sequence[torch.Tensor | np.ndarray], asr: WhisperASR | None = None, *,
               batch_size: int = 8, max_new_tokens: int = 48, prompt: str | None = None,
               peak: float | None = None, lead_seconds: float = 0.0) -> list[str]:
    """English text for each 16 kHz mono clip (padded/cropped to 30 s), greedy, without timestamps.

    ``asr`` defaults to the packaged tiny.en model (loaded on each call; pass one to reuse it).
    ``prompt`` is Whisper's initial prompt (previous-context text). ``peak`` / ``lead_seconds``: see
    prepare_clip; the defaults leave the audio as it is.
    """
    asr = asr or load_asr()
    prefix = _prefix(asr, prompt)
    texts: list[str] = []
    for start in range(0, len(waves), batch_size):
        clips = [prepare_clip(w, peak, lead_seconds) for w in waves[start:start + batch_size]]
        feats = torch.stack([asr.frontend(c) for c in clips])
        for ids in _greedy(asr, feats, prefix, max_new_tokens):
            texts.append(asr.tokenizer.decode(ids, skip_special_tokens=True).strip())
    return texts
