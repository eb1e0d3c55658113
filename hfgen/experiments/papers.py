"""The papers' own numbers, with their setups and where the quoted text was read, for the experiments' discussions.

Every number below was copied from stored text (the project's search over public pages and repositories), not
recalled: each entry names its source address. Where no stored text with numbers was found, the entry says so and
quotes none. The recipes under ``recipes/experiments/`` append these paragraphs to their ``results.md``
discussions; ``recipes/experiments/README.md`` and ``notebooks/experiments.ipynb`` show the same numbers.
"""

from __future__ import annotations

# Transcriptions of the papers used as sources (a commit each, so the address stays valid).
_BONDARENKO = ("https://github.com/viktor-shcherb/msc_thesis/blob/7336389f4624bb79f6d9df83750dc5ac529c73c0/references/"
               "2023-12-quantizable-transformers-attention-do-nothing/sections/")
_PRESS = ("https://github.com/viktor-shcherb/msc_thesis/blob/d8817a6820bcae602b820efdcab2cdf4bb5ee9ca/references/"
          "2022-04-alibi-train-short-test-long/sections/")
_HOLTZMAN = ("https://github.com/mitchellgordon95/text_degeneration/blob/9c5361bbd84d66ff40b7a0801201f0c1dbbe91b0/"
             "BASELINE_RESULTS.md")

ADAPTIVE_TEMPERATURE = (
    "Veličković et al. (arXiv:2410.01104, ICML 2025) — setup, as quoted from the paper at "
    "https://acmrep2026.k117.org/papers/softmax_is_not_enough_for_sharp_size_generalisation__4da3034b : a single "
    "attentional head predicts a feature of the maximum item in a set; each item's features go through a deep MLP "
    "before attending and the head's output through a deep MLP predictor; trained on sets of 16 items; 'While the "
    "model indeed attributes focus sharply and cleanly on the maximum item, this only holds true on the problem "
    "sizes that the model was trained on.' Their adaptive temperature (their Figure 4, JAX) is the one used here: "
    "beta = max(polyval([-0.037, 0.481, -2.3, 4.917, -1.791], H), 1) where the attention entropy H > 0.5, else 1, "
    "a drop-in replacement for the softmax at inference. **Numbers: none quoted.** The stored text found (abstract "
    "pages, the quote above, the JAX code) holds no accuracy or sharpness figures per set size, so this comparison "
    "is only about the direction of the effects: dispersion with set size, and adaptive temperature slowing it."
)

QUANTIZATION = (
    "Bondarenko et al. (arXiv:2306.12929, NeurIPS 2023), Table 2, as transcribed at "
    f"{_BONDARENKO}05_experiments.md — setup: BERT-base (109M parameters, masked LM, sequence length 128) and "
    "OPT-125m (causal LM, sequence length 512, batch 192), pre-trained from scratch on BookCorpus + English "
    "Wikipedia; 8-bit post-training quantization of all weights and activations except the final linear layer "
    "(symmetric weights, asymmetric activations, static ranges); each network trained twice (mean ± std), PTQ "
    "repeated with 3 seeds; 'max inf. norm' of the attention-layer output averaged over the validation set, kurtosis "
    "averaged over layers. FP16 perplexity / max inf. norm / average kurtosis / W8A8 perplexity:\n"
    "  - BERT vanilla 4.49 / 735 / 3076 / 1294; clipped softmax 4.39 / 21.5 / 80 / 4.52; gated attention "
    "4.45 / 39.2 / 201 / 4.65.\n"
    "  - OPT vanilla 15.84 / 340 / 1778 / 21.18; clipped softmax 16.29 / 63.2 / 19728 / 37.20 (the one case where "
    "their method failed); gated attention 15.55 / 8.7 / 18.9 / 16.02.\n\n"
    "In their Table 1 (BERT-base), the clipped-softmax stretch used here (gamma = -0.03, zeta = 1) gives "
    "4.41 / 20 / 80 / 4.55. Their "
    f"outlier analysis ({_BONDARENKO}03_outlier-analysis.md) finds, in a fine-tuned BERT-base, that the majority "
    "of outliers (> 97%) sit at delimiter tokens ([SEP], '.', ',') — the observation seed 000 cites — and argues "
    "that, since softmax never outputs exact zeros, 'the outliers will thus tend to become stronger in magnitude, "
    "the longer the network is trained'. "
    "Off-by-one softmax has no row in their tables. Evan Miller's post that proposes it "
    "(https://www.evanmiller.org/attention-is-off-by-one.html) reports no experiments ('Consider this an opinion "
    "piece, but if anyone out there on the Internet wants to run some experiments and prove me right ...'), so "
    "there is no published number for off-by-one to compare with; seed 000's own claim about it is only "
    "qualitative: 'likely more important for highly quantized weights, but 32 and 16 bit dtypes are probably "
    "unaffected'."
)

POSITIONS = (
    "Press et al. (ALiBi, arXiv:2108.12409, ICLR 2022), appendix Table 3, as transcribed at "
    f"{_PRESS}08_appendix-a.md — setup ({_PRESS}02_current-approaches.md): the WikiText-103 language model of "
    "Baevski & Auli (16 layers, dimension 1024, 8 heads, FFN 4096), only the position method changing, trained on "
    "L = 1024 tokens and evaluated on longer validation inputs without overlap. Validation perplexity at L_valid = "
    "1024 / 2024 (~2x) / 4024 (~3.9x): sinusoidal 19.34 / 51.09 / 144.00; rotary 19.33 / 31.17 / 44.30; T5 bias "
    "18.80 / 18.34 / 19.44; ALiBi 18.66 / 18.05 / 17.95. Learned absolute positions 'do not have a way to encode "
    "positions greater than L; it therefore has no ability to extrapolate' (their footnote 4). "
    "Su et al. (RoFormer, arXiv:2104.09864): the stored abstract (huggingface/transformers "
    "docs/source/model_doc/roformer.rst) claims 'flexibility of being expand to any sequence lengths' and "
    "'decaying inter-token dependency with increasing relative distances'; no stored length-extrapolation numbers "
    "of theirs were found (Press et al.'s rotary column above is the contrast). He et al. (DeBERTa, "
    "arXiv:2006.03654): the stored abstract (huggingface/transformers docs/source/model_doc/deberta.rst) reports "
    "fine-tuning gains of a large DeBERTa trained on half of RoBERTa-Large's data — MNLI 90.2% → 91.1%, SQuAD v2.0 "
    "88.4% → 90.7%, RACE 83.2% → 86.8% — not MLM perplexity or length extrapolation; no stored number for those "
    "was found."
)

SAMPLING = (
    "Holtzman et al. (2020, 'The Curious Case of Neural Text Degeneration', arXiv:1904.09751), Table 1 for GPT-2 "
    f"Large (762M parameters), as transcribed at {_HOLTZMAN} — perplexity of the generated text / Self-BLEU4 "
    "(lower = more diverse) / % repetition: human text 12.38 / 0.31 / 0.28; greedy 1.50 / 0.50 / 73.66; beam "
    "search (b = 16) 1.48 / 0.44 / 28.94; pure sampling 22.73 / 0.28 / 0.22; top-k (k = 40) 6.88 / 0.39 / 0.78; "
    "nucleus (p = 0.95) 13.13 / 0.32 / 0.36 (HUSE: pure sampling 0.67, top-k 0.19, nucleus 0.97). The shape to "
    "compare: greedy text far likelier than human text (and repetitive), pure sampling less likely than human "
    "text, nucleus sampling closest to human text. Seed 003 itself makes no quantitative claim."
)

# Press et al. Table 3 (trained on L = 1024): perplexity at L_valid = 1024, 2024 and 4024, for the automatic
# comparison of extrapolation rankings (ratio = perplexity at ~4x / at 1x).
PRESS_TABLE3 = {"sinusoidal": (19.34, 51.09, 144.00), "rotary": (19.33, 31.17, 44.30),
                "relative_bias": (18.80, 18.34, 19.44), "alibi": (18.66, 18.05, 17.95)}

# Holtzman et al. Table 1 (GPT-2 Large): perplexity of the generated text.
HOLTZMAN_PERPLEXITY = {"human": 12.38, "greedy": 1.50, "beam_16": 1.48, "pure_sampling": 22.73, "top_k_40": 6.88,
                       "nucleus_0.95": 13.13}

# Bondarenko et al. Table 2: (FP16 perplexity, max inf. norm, average kurtosis, W8A8 perplexity).
BONDARENKO_TABLE2 = {
    "BERT": {"vanilla": (4.49, 735, 3076, 1294), "clipped": (4.39, 21.5, 80, 4.52), "gated": (4.45, 39.2, 201, 4.65)},
    "OPT": {"vanilla": (15.84, 340, 1778, 21.18), "clipped": (16.29, 63.2, 19728, 37.20),
            "gated": (15.55, 8.7, 18.9, 16.02)},
}
