"""The Gato-like multi-domain decoder (``hfgen_gato``) and its grid-world control task.

- mu-law companding and uniform discretisation against Gato's formula written out with ``math``.
- image placeholders replaced by patch embeddings exactly; the modality embedding tells a value from an action.
- cached == uncached generation; save -> reload identical.
- the scripted expert walks a shortest path (return = 1 - cost * (Manhattan distance)); episodes as Gato tokens.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

import hfgen  # noqa: F401
from hfgen.data.control import (GridWorld, NUM_ACTIONS, episode_tokens, evaluate_policies, expert_action,
                                run_episode, timestep_tokens)
from hfgen.models.configuration_hfgen_gato import MODALITIES, HfGenGatoConfig
from hfgen.models.modeling_hfgen_gato import (HfGenGatoForCausalLM, discretize, mu_law_decode, mu_law_encode,
                                              undiscretize)


def tiny_gato(seed: int = 0) -> HfGenGatoForCausalLM:
    torch.manual_seed(seed)
    config = HfGenGatoConfig(text_vocab_size=50, num_bins=32, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, image_size=8, patch_size=4, pad_token_id=0,
                             eos_token_id=1, initializer_range=0.1)
    return HfGenGatoForCausalLM(config).eval()


def test_mu_law_and_bins_follow_gatos_formula():
    mu, big_m, bins = 100.0, 256.0, 1024
    values = [-256.0, -31.5, -1.0, -0.01, 0.0, 0.003, 0.5, 2.0, 77.7, 256.0]
    for x in values:
        companded = math.copysign(1, x) * math.log(abs(x) * mu + 1) / math.log(big_m * mu + 1) if x else 0.0
        expected_bin = min(int(math.floor((companded + 1) / 2 * bins)), bins - 1)
        assert mu_law_encode(torch.tensor(x, dtype=torch.float64)).item() == pytest.approx(companded, abs=1e-12)
        assert discretize(torch.tensor([x])).item() == expected_bin, x
    grid = torch.linspace(-256, 256, 2001, dtype=torch.float64)
    torch.testing.assert_close(mu_law_decode(mu_law_encode(grid)), grid)
    assert (discretize(grid).diff() >= 0).all()  # monotone
    # A bin's centre decodes to a value whose bin is that bin.
    assert torch.equal(discretize(undiscretize(torch.arange(bins))), torch.arange(bins))


def test_values_outside_the_declared_range_are_refused():
    with pytest.raises(ValueError, match=r"declared range \[-256, 256\]"):
        discretize(torch.tensor([0.0, 300.0]))
    with pytest.raises(ValueError, match="finite"):
        discretize(torch.tensor([float("nan")]))


def test_image_placeholders_become_patch_embeddings():
    model = tiny_gato()
    c = model.config
    ids = torch.tensor([[c.image_token_id] * c.num_patches + [5, 6]])
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=x).logits
        embeds = model.model.embed_tokens(ids)
        patches = x.reshape(1, 1, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5).reshape(1, 4, 16)  # row-major patches
        embeds[:, :c.num_patches] = model.patch_embedding(patches) + model.patch_position_embedding.weight
        modality = torch.tensor([[MODALITIES.index("image")] * c.num_patches + [0, 0]])
        embeds = embeds + model.modality_embedding(modality)
        expected = model.lm_head(model.model(inputs_embeds=embeds).last_hidden_state)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="more images than image placeholders"):
        model(input_ids=ids, pixel_values=torch.randn(2, 1, 8, 8))


def test_modality_embedding_separates_values_from_actions():
    model = tiny_gato()
    c = model.config
    ids = torch.tensor([[c.first_bin_id + 3, c.separator_token_id, c.first_bin_id + 2]])
    as_value = torch.tensor([[2, 0, 2]])
    as_action = torch.tensor([[2, 0, 3]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids, modality_ids=as_value).logits)
        assert not torch.allclose(model(input_ids=ids, modality_ids=as_value).logits[0, -1],
                                  model(input_ids=ids, modality_ids=as_action).logits[0, -1])


def test_cached_generation_equals_uncached():
    model = tiny_gato()
    c = model.config
    ids = torch.tensor([[c.image_token_id] * c.num_patches + [5, 6]] * 2)
    x = torch.randn(2, 1, 8, 8)
    kwargs = dict(input_ids=ids, pixel_values=x, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                  output_logits=True, return_dict_in_generate=True, suppress_tokens=[c.image_token_id])
    cached, uncached = model.generate(**kwargs), model.generate(**kwargs, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), rtol=1e-4, atol=1e-4)


def test_save_reload_identical(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_gato()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is HfGenGatoForCausalLM
    ids = torch.tensor([[7, 8, model.config.first_bin_id, model.config.separator_token_id]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_expert_walks_a_shortest_path_and_beats_random():
    env = GridWorld(seed=3)
    for _ in range(20):
        observation = env.reset()
        distance = abs(observation[0] - observation[2]) + abs(observation[1] - observation[3])
        total, done, steps = 0.0, False, 0
        while not done:
            observation, reward, done = env.step(expert_action(observation))
            total += reward
            steps += 1
        assert steps == distance
        assert total == pytest.approx(1 - env.step_cost * distance)
    rng = random.Random(0)
    random_mean = sum(run_episode(GridWorld(seed=5), lambda o, h: rng.randrange(NUM_ACTIONS))[0] for _ in range(50))
    expert_mean = sum(run_episode(GridWorld(seed=5), lambda o, h: expert_action(o))[0] for _ in range(50))
    assert expert_mean > random_mean


def test_episode_tokens_mark_actions_as_targets():
    config = tiny_gato().config
    env = GridWorld(seed=0)
    _, history = run_episode(env, lambda o, h: expert_action(o))
    ids, modality, target = episode_tokens(config, history)
    assert len(ids) == len(history) * 6  # 4 values, separator, action
    actions = [i - config.first_bin_id for i, t in zip(ids, target) if t]
    assert actions == [a for _, a in history]
    assert all(m == MODALITIES.index("action") for m, t in zip(modality, target) if t)
    first, _, _ = timestep_tokens(config, history[0][0], None)
    assert first[-1] == config.separator_token_id
    with pytest.raises(ValueError, match="Actions are 0..3"):
        env.step(7)


def test_policy_evaluation_runs_the_model():
    results = evaluate_policies(tiny_gato(), episodes=3)
    assert set(results) == {"expert_return", "random_return", "model_return"}
    assert results["expert_return"] > 0


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_rows_equal_rows_alone(side):
    """Rows of different lengths and modalities (image + text, a control episode, text), padded into one batch with an
    attention mask: each row's logits at its real tokens equal the logits of the row run alone, and greedy
    generation from a left-padded batch equals generation row by row."""
    model = tiny_gato()
    c = model.config
    env = GridWorld(seed=1)
    _, history = run_episode(env, lambda o, h: expert_action(o))
    episode_ids, episode_modality, _ = episode_tokens(c, history[:2])
    rows = [
        ([c.image_token_id] * c.num_patches + [5, 6, 7], None, torch.randn(1, 1, 8, 8)),
        (episode_ids, episode_modality, None),
        ([9, 10, 11, 12, 13, 14, 15], None, None),
    ]
    length = max(len(ids) for ids, _, _ in rows)
    ids_batch, modality_batch, mask = [], [], []
    for ids, modality, _ in rows:
        modality = modality if modality is not None else model.default_modality_ids(torch.tensor([ids]))[0].tolist()
        pad = length - len(ids)
        if side == "left":
            ids_batch.append([c.pad_token_id] * pad + list(ids))
            modality_batch.append([0] * pad + list(modality))
            mask.append([0] * pad + [1] * len(ids))
        else:
            ids_batch.append(list(ids) + [c.pad_token_id] * pad)
            modality_batch.append(list(modality) + [0] * pad)
            mask.append([1] * len(ids) + [0] * pad)
    ids_batch, modality_batch, mask = map(torch.tensor, (ids_batch, modality_batch, mask))
    pixel_values = torch.cat([x for _, _, x in rows if x is not None])
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)  # what generate() derives from the mask
    with torch.no_grad():
        batched = model(input_ids=ids_batch, pixel_values=pixel_values, modality_ids=modality_batch,
                        attention_mask=mask, position_ids=position_ids).logits
        for row, (ids, modality, x) in enumerate(rows):
            alone = model(input_ids=torch.tensor([ids]), pixel_values=x,
                          modality_ids=None if modality is None else torch.tensor([modality])).logits[0]
            torch.testing.assert_close(batched[row][mask[row].bool()], alone, rtol=1e-5, atol=1e-5)
    if side == "left":  # generation from the padded batch (text and image rows; modality ids follow the token ids)
        kwargs = dict(max_new_tokens=4, do_sample=False, suppress_tokens=[c.image_token_id])
        keep = [0, 2]
        generated = model.generate(input_ids=ids_batch[keep], attention_mask=mask[keep], pixel_values=pixel_values,
                                   **kwargs)[:, length:]
        for out, row in zip(generated, keep):
            ids, _, x = rows[row]
            alone = model.generate(input_ids=torch.tensor([ids]), pixel_values=x, **kwargs)[0, len(ids):]
            assert torch.equal(out, alone)
