"""Train the tiny SentencePiece model the tests use in place of PaliGemma's tokenizer.

    .venv/bin/python tools/make_test_tokenizer.py [--out tests/data/test_spm.model] [--check]

The real tokenizer (gs://big_vision/paligemma_tokenizer.model, 257152 pieces) is not reachable here and
no registry package ships it. This model copies the settings that shape OpenPI's token streams:
- BPE, byte_fallback (unknown characters become <0xNN> byte pieces, never <unk>), split_digits
  (every digit its own piece: the discretised pi05 state "128 5" -> 1 2 8 ▁ 5);
- special ids as Gemma / PaliGemma: <pad>=0, <eos>=1, <bos>=2, <unk>=3 (OpenPI pads with 0 and
  encodes with add_bos=True, models/tokenizer.py:29-38);
- "\n" one user-defined piece, as in Gemma's vocabulary (pi0's "start of answer" token is encode("\n"),
  models/tokenizer.py:33, and pi05's prompt has ";\nAction: ", :28);
- normalizer "identity" with no dummy prefix and no whitespace collapsing (Gemma keeps the text as is:
  "pick up" -> "pick", "▁up"; runs of spaces survive as whitespace-only pieces).
Training reads the embedded corpus below, single-threaded, so the file is byte-identical across runs
(`--check` verifies the committed file against a fresh build). Vocab 640 pieces, ~10 KB.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path

import sentencepiece as spm

VOCAB_SIZE = 640
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "test_spm.model"

_TASKS = """\
pick up the black bowl between the plate and the ramekin and place it on the plate
put both the alphabet soup and the tomato sauce in the basket
open the top drawer and put the bowl inside
turn on the stove and put the moka pot on it
put the white mug on the left plate and put the yellow and white mug on the right plate
pick up the book and place it in the back compartment of the caddy
put the cream cheese in the bowl
stack the black bowl at the front on the black bowl in the middle
fold the towel
uncap the pen
Transfer cube
open the tupperware and put the food on the plate
do something
put the marker in the cup
wipe the table with the sponge
close the microwave door
move the can to the left of the bottle
place the spoon next to the red cup
push the button
hang the mug on the rack
"""


def corpus() -> list[str]:
    """Task prompts, the same prompts cleaned as OpenPI cleans them, and pi05-style state lines (no newlines)."""
    lines = []
    for i, task in enumerate(_TASKS.splitlines()):
        state = " ".join(str((37 * i + 11 * k) % 256) for k in range(8))
        lines += [task, task.capitalize() + ".", f"Task: {task}, State: {state};", "Action: ", f"step {i}: {task}"]
    lines += ["0 1 2 3 4 5 6 7 8 9 10 128 255 -1", "a b c d e f g h i j k l m n o p q r s t u v w x y z",
              "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z", ", . ; : ! ? ' \" ( ) [ ] - _ / +",
              "two  spaces   three    four"]
    return lines


def train() -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=model, vocab_size=VOCAB_SIZE, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=["\n"], byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=1.0, num_threads=1, minloglevel=2,
    )
    return model.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true", help="fail if --out differs from a fresh build")
    args = ap.parse_args(argv)
    data = train()
    digest = hashlib.sha256(data).hexdigest()
    if args.check:
        same = args.out.is_file() and args.out.read_bytes() == data
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from a fresh build'} (fresh sha256 {digest})")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
