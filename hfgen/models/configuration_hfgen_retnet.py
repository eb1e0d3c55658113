"""Configuration of the retentive network (``hfgen_retnet``; Sun et al. 2023, "Retentive Network: A Successor to
Transformer for Large Language Models", named by seed 004 as more scalable than O(N^2) attention)."""

from __future__ import annotations

from .configuration_common import HfGenConfig
from .moe import MOE_DEFAULTS, init_moe_config, validate_moe_config
from .variants import RETENTION_MODES  # noqa: F401  (re-exported)

RETNET_AUTO_MAP = {
    "AutoConfig": "configuration_hfgen_retnet.HfGenRetNetConfig",
    "AutoModel": "modeling_hfgen_retnet.HfGenRetNetModel",
    "AutoModelForCausalLM": "modeling_hfgen_retnet.HfGenRetNetForCausalLM",
}


class HfGenRetNetConfig(HfGenConfig):
    r"""Configuration of :class:`HfGenRetNetModel` and :class:`HfGenRetNetForCausalLM`.

    A RetNet layer is ``Y = MSR(LN(X)) + X``, ``X' = FFN(LN(Y)) + Y`` (the paper's eq. 9). Multi-scale retention
    (MSR) has ``num_attention_heads`` heads of query/key width ``hidden_size / num_attention_heads`` and value width
    ``value_factor`` times that; head ``h`` decays at ``gamma_h = 1 - 2^(-5-h)``.

    Args:
        vocab_size, hidden_size, num_hidden_layers, intermediate_size, initializer_range, tie_word_embeddings,
            pad/bos/eos_token_id, use_cache: as for Llama.
        num_attention_heads (`int`, 4): retention heads; must divide ``hidden_size``, and the query/key head width
            must be even (the xPos-style rotation turns pairs of channels).
        value_factor (`int`, 2): value (and gate) width per head over the query/key width (the paper uses 2).
        rope_theta (`float`, 10000.0): base of the rotation angles ``theta_i = rope_theta^(-2i/d)``.
        retention_mode (`str`, "chunkwise"): the form used for a multi-token forward: ``parallel`` (one
            ``[L, L]`` decay-masked product per head, the training form), ``chunkwise`` (parallel inside chunks of
            ``retention_chunk_size`` tokens, recurrent across them: linear in the length) or ``recurrent`` (token by
            token). All three compute the same function; a single new token always takes the recurrent step.
        retention_chunk_size (`int`, 64): chunk length of the chunkwise form.
        hidden_act (`str`, "gelu") / mlp_type (`str`, "standard"): the FFN; the paper's is ``gelu(X W1) W2``.
        norm_type (`str`, "layernorm"): ``layernorm`` (the paper) or ``rmsnorm``; ``rms_norm_eps`` is the epsilon of
            every norm, the retention group norm included.
        num_experts / num_experts_per_tok / router_*: a mixture of experts in place of the FFN (see ``moe.py``).
        max_position_embeddings (`int`, 2048): informational only (no learned positions, no limit in the model).
        decoding_weight_copies (`bool`, False): decode one token at a time through a plan that multiplies
            input-major ``[in, out]`` copies of the matrices of the step (the four input projections as one, the
            output projection, the FFN, the head), made on the first decoding step. A single row times such a
            matrix reads memory about twice as fast in CPU BLAS as against the ``[out, in]`` layout of
            ``nn.Linear`` (see ``retnet_decoding.py``); the price is one more copy of those weights while the model
            decodes, and copies can go stale: the plan is remade when a module, hook, parameter or a weight's
            version changes, but a change PyTorch does not record (``p.data.mul_()``, an EMA written through
            ``p.data.copy_()``) is not seen until ``model.model.reset_decoding_plan()``. Hence opt-in. ``False``:
            no copies, the modules decode (slower per token, never stale).
    """

    model_type = "hfgen_retnet"
    extra_config_keys = tuple(MOE_DEFAULTS)
    # Every Auto class a saved folder serves (written to config.json; registration.py registers the same).
    AUTO_MAP = RETNET_AUTO_MAP
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    value_factor: int = 2
    hidden_act: str = "gelu"
    mlp_type: str = "standard"
    mlp_bias: bool = False
    norm_type: str = "layernorm"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    retention_mode: str = "chunkwise"
    retention_chunk_size: int = 64
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = False
    decoding_weight_copies: bool = False

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)
        init_moe_config(self, kwargs)
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        validate_retnet_config(self)
        validate_moe_config(self)

    @property
    def head_dim(self) -> int:
        """Query/key width per head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def value_head_dim(self) -> int:
        return self.head_dim * self.value_factor


def validate_retnet_config(config) -> None:
    """``ValueError`` naming the keys and the valid values, before any weight is created: how the sizes fit together
    (each value is checked where it is set: ``variants.VALUE_CHECKS``)."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    if hidden % heads != 0:
        raise ValueError(f"hidden_size ({hidden}) must be divisible by num_attention_heads ({heads}): each retention "
                         f"head gets hidden_size / num_attention_heads query/key channels.")
    if (hidden // heads) % 2 != 0:
        raise ValueError(f"The xPos-style rotation turns pairs of channels: the retention head width hidden_size / "
                         f"num_attention_heads must be even, got {hidden} / {heads} = {hidden // heads}.")
