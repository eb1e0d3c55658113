"""A byte-level BPE tokenizer trained on the embedded corpus, with a ChatML chat template.

The trained tokenizer ships in `TOKENIZER_DIR` (the `tokenizer/` folder beside this file) so that nothing has to be
trained before the first run; `python -m hfgen.data.tokenizer` rebuilds it.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

TOKENIZER_DIR = Path(__file__).with_name("tokenizer")

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Order fixes the ids: 0, 1, 2, 3, before the 256 byte tokens and the merges.
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, IM_START, IM_END)

MODEL_MAX_LENGTH = 2048
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256  # every byte must have a token, or byte-level stops being lossless
MAX_VOCAB_SIZE = 1 << 20

# ChatML. The assistant's content and its <|im_end|> sit inside {% generation %} so that
# `apply_chat_template(..., return_assistant_tokens_mask=True)` (TRL's assistant_only_loss) trains the model on
# its answers and on the token that ends them, not on the prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role ' + message['role'] + '; valid roles: system, user, assistant') }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style) on `texts` and wrap it for transformers.

    Special tokens take ids 0-3: `<|endoftext|>` (bos, eos), `<|pad|>`, `<|im_start|>`, `<|im_end|>`. No unknown
    token is needed: every byte has a token. The same texts in the same order give the same tokenizer.

    Args:
        texts: training documents.
        vocab_size: total vocabulary size including the special and byte tokens, in [260, 1048576].
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"vocab_size must be an int in [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}], got {vocab_size!r}")
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be in [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}], got {vocab_size}")
    if isinstance(texts, str):
        # A str is an iterable of characters: training would silently learn nothing useful.
        raise ValueError("texts must be an iterable of documents, not a single str")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # Keeps the offsets byte-exact (no trimming of spaces), which the assistant-token mask relies on.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        # Byte-level decoding is already exact; the clean-up would rewrite " ." into "." and break round trips.
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer() -> PreTrainedTokenizerFast:
    """Load the tokenizer that ships with hfgen (from `TOKENIZER_DIR`, never from the network)."""
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def main(argv: list[str] | None = None) -> None:
    """Train the tokenizer on the embedded corpus's train split and save it (by default, into the package)."""
    parser = argparse.ArgumentParser(
        prog="python -m hfgen.data.tokenizer",
        description="Train hfgen's byte-level BPE tokenizer on load_corpus()['train'] and save it.",
    )
    parser.add_argument("--vocab-size", type=int, default=8192, help="total vocabulary size (default: 8192)")
    parser.add_argument(
        "--output-dir", type=Path, default=TOKENIZER_DIR, help=f"where to save (default: {TOKENIZER_DIR})"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from .corpus import load_corpus

    tokenizer = train_tokenizer(load_corpus()["train"]["text"], vocab_size=args.vocab_size)
    os.makedirs(args.output_dir, exist_ok=True)
    tokenizer.save_pretrained(str(args.output_dir))
    logger.info("saved a %d-token tokenizer to %s", len(tokenizer), args.output_dir)


if __name__ == "__main__":
    main()
