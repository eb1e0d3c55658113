"""Configuration of the decoder-only family (``hfgen_decoder``)."""

from __future__ import annotations

from .configuration_common import HfGenTextConfig
from .parallel_plans import DECODER_PP_PLAN, decoder_tp_plan
from .moe import MOE_DEFAULTS, MOE_OUTPUT_KEYS, init_moe_config, validate_moe_config

DECODER_AUTO_MAP = {
    "AutoConfig": "configuration_hfgen_decoder.HfGenDecoderConfig",
    "AutoModel": "modeling_hfgen_decoder.HfGenDecoderModel",
    "AutoModelForCausalLM": "modeling_hfgen_decoder.HfGenDecoderForCausalLM",
    "AutoModelForSequenceClassification": "modeling_hfgen_decoder.HfGenDecoderForSequenceClassification",
}


class HfGenDecoderConfig(HfGenTextConfig):
    r"""Configuration of :class:`HfGenDecoderModel` and its heads.

    With the default variant keys the model is Llama: the Llama keys below have Llama's names and meaning, so a
    Llama ``config.json`` loads into this class unchanged and a Llama checkpoint into the model. The defaults
    describe a small model (6 layers, hidden 256) that trains on a CPU.

    Variant keys (shared by every hfgen family):
        attention_scoring (`str`, "scaled_dot_product"): ``scaled_dot_product`` ``softmax(QK^T/sqrt(d_k))V``,
            ``dot_product`` ``softmax(QK^T)V``, ``general`` ``softmax(Q W_k K^T)V``, ``additive``
            ``softmax(v^T tanh(W_q Q + W_k K))V`` (seed 003, "Attention Scores").
        softmax_variant (`str`, "standard"): ``standard``, ``temperature`` (``exp(z_i/theta)/sum_j exp(z_j/theta)``,
            theta = ``softmax_temperature``), ``adaptive_temperature`` (seed 000's polynomial in the entropy),
            ``off_by_one`` (``exp(z_i)/(1 + sum_j exp(z_j))``), ``clipped`` (``clip((zeta-gamma) softmax + gamma,
            0, 1)`` with ``clipped_softmax_zeta`` / ``clipped_softmax_gamma``).
        attention_gate (`bool`, False): per-head output gate ``sigmoid(G(x))`` (Bondarenko et al. 2023).
        num_key_value_heads (`int`): 1 = multi-query, ``num_attention_heads`` = multi-head, between = grouped-query.
        position_embedding (`str`, "rotary"): ``rotary``, ``sinusoidal``, ``learned``, ``relative_bias`` (T5
            buckets: ``relative_attention_num_buckets``, ``relative_attention_max_distance``), ``alibi``, ``none``.
        rope_parameters (`dict`, ``{"rope_type": "default", "rope_theta": 10000.0}``): rotary positions as in
            transformers 5: ``rope_type`` is ``default`` or any entry of ``transformers.modeling_rope_utils.
            ROPE_INIT_FUNCTIONS`` (``linear``, ``dynamic``, ``yarn``, ``longrope``, ``llama3``, ``proportional``),
            with that type's keys (``factor``, ``original_max_position_embeddings``, ...), giving Llama's logits for
            each. The legacy ``rope_scaling`` and ``rope_theta`` of older config.json files (Llama 3.x's) are read
            as transformers reads them. Checked by transformers' own rope validation wherever it is set; a dict set
            on the config of a model already built applies to models built afterwards, not to that model (as with
            Llama). A scaled rope with a non-rotary ``position_embedding`` is refused. ``dynamic`` follows the
            current length (transformers' dynamic NTK): beyond ``max_position_embeddings``, keys cached at a shorter
            length keep their rotation, so cached decoding equals Llama's cached decoding, not an uncached pass.
        norm_type (`str`, "rmsnorm") / norm_position (`str`, "pre"): ``rmsnorm`` | ``layernorm``; ``pre`` | ``post``.
        mlp_type (`str`, "gated"): ``gated`` (SwiGLU with silu) | ``standard``.
        query_chunk_size (`int`, 1024): query rows per chunk on the paths that need the probabilities.
        num_experts (`int`, 0) / num_experts_per_tok (`int`, 2) / router_aux_loss_coef / router_z_loss_coef /
            router_jitter_noise / output_router_logits: a sparse mixture of experts in place of each MLP
            (``moe.py``; Mixtral's parameter names and ``num_local_experts`` accepted); 0 experts: the plain MLP,
            exactly as without these keys. The router coefficients default to Mixtral's 0.001 (z-loss: ST-MoE's 0.001)
            with experts and to 0 without. ``output_router_logits`` (default: on with experts) returns the router
            logits and adds the weighted router losses to the loss. Capacity: none, by design ("dropless", as
            Mixtral): every token is processed by all of its top-k experts however unbalanced the routing, so no
            token is ever dropped; imbalance costs time, not quality (``moe.expert_utilization`` shows it).
    """

    model_type = "hfgen_decoder"
    extra_config_keys = tuple(MOE_DEFAULTS)
    # Every Auto class a saved folder serves (written to config.json; registration.py registers the same).
    AUTO_MAP = DECODER_AUTO_MAP
    # Parallel plans in transformers' format (parallel_plans.py); no TP plan for variants it cannot split.
    base_model_tp_plan = property(decoder_tp_plan)
    base_model_pp_plan = DECODER_PP_PLAN
    keys_to_ignore_at_inference = ["cache", *MOE_OUTPUT_KEYS]

    # (sizes, heads, vocabulary and the variant keys: HfGenTextConfig's fields, with the defaults documented above)
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        kwargs.pop("pretraining_tp", None)  # Llama-1 era key with no effect here
        # A Llama config.json carries model_type="llama"; kept, it would shadow the class attribute and the loaded
        # model would report itself as Llama in memory (config.json is written from the class attribute anyway).
        kwargs.pop("model_type", None)
        init_moe_config(self, kwargs)  # num_experts / num_experts_per_tok / router_*: see moe.py (0: plain MLP)
        super().__post_init__(**kwargs)  # head_dim, rope_parameters (also from rope_theta / rope_scaling), checks

    def validate_architecture(self) -> None:
        """How the keys fit together: the attention keys and the mixture-of-experts keys."""
        super().validate_architecture()
        validate_moe_config(self)
