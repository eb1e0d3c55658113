"""The shipped tokenizer, made ready for encoders (BERT-style inputs): a mask token for masked language modelling,
and ``<|cls|> A <|sep|>`` / ``<|cls|> A <|sep|> B <|sep|>`` around one or two segments, with token type ids.

The three tokens are appended after the shipped vocabulary at load time (ids 8192, 8193, 8194 for the shipped
8192-token tokenizer), so the decoder's ids -- 0-3 for ``<|endoftext|>``, ``<|pad|>``, ``<|im_start|>``,
``<|im_end|>``, and every byte and merge -- are unchanged: an encoder needs ``vocab_size=len(tokenizer)``.
The result saves and reloads as an ordinary tokenizer (``save_pretrained`` / ``AutoTokenizer.from_pretrained``).
"""

from __future__ import annotations

from tokenizers import processors
from transformers import PreTrainedTokenizerBase

MASK_TOKEN = "<|mask|>"
CLS_TOKEN = "<|cls|>"
SEP_TOKEN = "<|sep|>"


def add_encoder_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give ``tokenizer`` (a fast tokenizer) mask, cls and sep tokens where it has none, and BERT's template:
    ``[CLS] A [SEP]`` (token types 0) and ``[CLS] A [SEP] B [SEP]`` (types 0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]``).
    Existing ids are never changed: new tokens go after the vocabulary. Returns the same object."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"add_encoder_tokens needs a fast tokenizer (tokenizers backend), got "
                         f"{type(tokenizer).__name__}.")
    missing = {key: token for key, token in (("mask_token", MASK_TOKEN), ("cls_token", CLS_TOKEN),
                                             ("sep_token", SEP_TOKEN)) if getattr(tokenizer, key) is None}
    if missing:
        tokenizer.add_special_tokens(missing)
    cls, sep = tokenizer.cls_token, tokenizer.sep_token
    template = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.cls_token_id), (sep, tokenizer.sep_token_id)],
    )
    backend = tokenizer.backend_tokenizer
    existing = backend.post_processor
    # Keep a byte-level post-processor (exact offsets, which token classification reads) in front of the template.
    backend.post_processor = template if existing is None or isinstance(existing, processors.TemplateProcessing) \
        else processors.Sequence([existing, template])
    tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    tokenizer.init_kwargs["model_input_names"] = tokenizer.model_input_names  # kept by save_pretrained
    return tokenizer


def load_encoder_tokenizer() -> PreTrainedTokenizerBase:
    """hfgen's shipped tokenizer with :func:`add_encoder_tokens` applied (never from the network)."""
    from .tokenizer import load_tokenizer

    return add_encoder_tokens(load_tokenizer())
