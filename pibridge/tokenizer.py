"""The prompt tokenizer: a SentencePiece model loaded by path (PaliGemma's in real use), or token ids given directly.

OpenPI loads gs://big_vision/paligemma_tokenizer.model with `sentencepiece` (models/tokenizer.py:18-20) and
calls `encode(text, add_bos=...)` only; this wrapper exposes exactly that. Observations may instead carry
token ids (then no tokenizer is needed: see openpi_preprocess.pad_tokens).
Tests use tests/data/test_spm.model (tools/make_test_tokenizer.py), trained with PaliGemma's settings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from pibridge.errors import PibridgeError

# Gemma / PaliGemma special ids (OpenPI pads with 0 = False, models/tokenizer.py:36-38; BOS via add_bos).
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2


@dataclass(frozen=True)
class SentencePieceTokenizer:
    path: Path
    sha256: str
    vocab_size: int
    _sp: object = field(repr=False, compare=False)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        return list(self._sp.encode(text, add_bos=add_bos))  # type: ignore[attr-defined]

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(list(ids))  # type: ignore[attr-defined]


def load_tokenizer(path: str | Path) -> SentencePieceTokenizer:
    """Load a SentencePiece model file; PibridgeError when it is missing, not a model, or has non-Gemma special ids."""
    import sentencepiece

    path = Path(path)
    if not path.is_file():
        raise PibridgeError(f"tokenizer model {path} not found", expected="a SentencePiece .model file "
                            "(PaliGemma's: gs://big_vision/paligemma_tokenizer.model)", fix="pass --tokenizer PATH")
    data = path.read_bytes()
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except (RuntimeError, OSError) as err:
        raise PibridgeError(f"{path} is not a SentencePiece model ({err})", expected="a SentencePiece .model file",
                            fix="pass --tokenizer with PaliGemma's paligemma_tokenizer.model") from None
    ids = (sp.pad_id(), sp.eos_id(), sp.bos_id())
    if ids != (PAD_ID, EOS_ID, BOS_ID):
        raise PibridgeError(f"{path} has pad/eos/bos ids {ids}", expected=f"{(PAD_ID, EOS_ID, BOS_ID)} as in PaliGemma",
                            fix="use PaliGemma's tokenizer (OpenPI pads with id 0 and prepends BOS id 2)")
    return SentencePieceTokenizer(path=path, sha256=hashlib.sha256(data).hexdigest(),
                                  vocab_size=sp.vocab_size(), _sp=sp)
