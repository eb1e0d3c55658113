"""Data-parallel training gives the weights of one process: every text recipe under ``torchrun --nproc_per_node 2``
against the same recipe in one process with the doubled per-device batch, every saved parameter compared.

Sequential sampling and ``--dataloader_drop_last`` make both runs see the same global batches (rank r takes the
r-th half of each global batch), and the tiny models have no dropout, so the only difference left is the order of
floating-point sums: anything else means the ranks did not train as one model (issue 20: an evaluation before
training left the model marked as prepared, and the Trainer then trained it without DDP).

Masked LM and span corruption draw each block's noise (masks, dropped spans) from a generator keyed by (seed,
epoch, the block's tokens) (``hfgen.data.denoising.ExampleKeyedNoise``): the noise depends on the data, not on the
process or on the batch a block lands in, so a plain ``torchrun`` masks every block as one process does.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_peft_recipe import base  # noqa: F401  (the fixture: a saved tiny decoder for LoRA)

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)

# A few optimizer steps of a global batch of 8, in the order of the data (rank r takes the r-th half of each global
# batch), at a learning rate that moves every weight, with an evaluation before and after training as every core does.
COMMON_FLAGS = ["--max_steps", "4", "--learning_rate", "5e-3", "--lr_scheduler_type", "constant",
                "--train_sampling_strategy", "sequential", "--dataloader_drop_last", "true",
                "--per_device_eval_batch_size", "4", "--save_strategy", "no", "--eval_strategy", "no",
                "--logging_steps", "1", "--seed", "0", "--report_to", "none", "--disable_tqdm", "true"]
GLOBAL_BATCH = 8
NO_DROPOUT_ENCODER = ["--config_overrides", "hidden_dropout_prob=0.0,attention_dropout=0.0"]
TINY_CAUSAL_LM = ["--hidden_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4",
                  "--num_key_value_heads", "2", "--intermediate_size", "128", "--block_size", "32",
                  "--max_train_samples", "64", "--max_eval_samples", "8"]
TINY_ENCODER = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
                "--intermediate_size", "64", "--max_train_samples", "64", "--max_eval_samples", "8"]
RECIPE_FLAGS = {
    "pretrain_causal_lm": TINY_CAUSAL_LM,
    # The encoder's dropout is off: each process would draw its own masks.
    "finetune_classification": [*TINY_ENCODER, "--max_length", "16", *NO_DROPOUT_ENCODER],
    "pretrain_masked_lm": [*TINY_ENCODER, "--block_size", "32", *NO_DROPOUT_ENCODER],
    "pretrain_span_corruption": [*TINY_ENCODER, "--block_size", "32", "--config_overrides",
                                 "hidden_dropout=0.0,attention_dropout=0.0"],
    # LoRA on a saved tiny decoder ({base}: test_peft_recipe's base fixture); the adapter holds every trained weight.
    "finetune_lora": ["--model_name_or_path", "{base}", "--block_size", "32", "--max_train_samples", "64",
                      "--max_eval_samples", "8", "--target_modules", "all-linear", "--lora_dropout", "0.0"],
    # TRL's trainers; --eval_max_new_tokens keeps SFT's final sampling short.
    "sft": ["--hidden_size", "32", "--num_hidden_layers", "1", "--max_length", "64", "--eval_max_new_tokens", "2"],
    "reward_model": ["--hidden_size", "32", "--num_hidden_layers", "1", "--max_length", "64"],
    "train_gato": ["--hidden_size", "32", "--num_hidden_layers", "1", "--block_size", "32", "--expert_episodes", "20",
                   "--eval_episodes", "2", "--eval_images", "4", "--eval_text_blocks", "4"],
    # Two stages: the language model on text, then the cross-attention bridge with the language model frozen.
    "train_vlm": ["--fusions", "cross_attention", "--hidden_size", "32", "--num_hidden_layers", "1",
                  "--vision_hidden_size", "32", "--vision_layers", "1", "--lm_steps", "3", "--bridge_steps", "3",
                  "--bridge_learning_rate", "5e-3", "--eval_images", "4"],
}
# finetune_lora's adapter holds every trained weight; train_gato and train_vlm save in a subfolder; the others save
# model.safetensors.
SAVED = {"finetune_lora": "adapter_model.safetensors", "train_gato": "model/model.safetensors",
         "train_vlm": "cross_attention/model.safetensors"}
RECIPES = [
    pytest.param("pretrain_causal_lm", id="pretrain_causal_lm"),
    *[pytest.param(recipe, id=recipe, marks=pytest.mark.slow) for recipe in (
        "finetune_classification", "finetune_lora", "pretrain_masked_lm", "pretrain_span_corruption",
        "reward_model", "sft")],
    # Gato's loss is a sum of per-domain means: each rank divides by the step's token count (LabelledTokenTrainer).
    pytest.param("train_gato", id="train_gato", marks=pytest.mark.slow),
    pytest.param("train_vlm", id="train_vlm", marks=pytest.mark.slow),
]


def recipe_run(recipe: str, output_dir: Path, processes: int, launcher: list[str] | None = None,
               extra: list[str] = (), base_folder: str | None = None) -> dict[str, torch.Tensor]:
    """Run ``recipes/<recipe>.py`` with its tiny flags and COMMON_FLAGS, ``GLOBAL_BATCH`` rows per step in all, in
    one process (``processes=1``) or under ``launcher`` (default ``torchrun --standalone --nproc_per_node N``);
    return the saved weights. ``extra`` flags come last (they win)."""
    flags = [flag.replace("{base}", base_folder or "") for flag in RECIPE_FLAGS[recipe]]
    launch(REPO / "recipes" / f"{recipe}.py", [*flags, *COMMON_FLAGS, *extra, "--per_device_train_batch_size",
                                               str(GLOBAL_BATCH // processes), "--output_dir", str(output_dir)],
           processes, launcher)
    return load_file(output_dir / SAVED.get(recipe, "model.safetensors"))


def launch(script: Path | str, flags: list[str], processes: int, launcher: list[str] | None = None) -> None:
    """``python script flags`` (``processes=1``) or the same under ``launcher`` (default ``torchrun --standalone
    --nproc_per_node N``), one thread per process; fails the test with the end of the output if the run fails.
    ``script`` "-m" runs the module named first in ``flags``."""
    if processes == 1:
        command = [sys.executable, str(script)]
    else:
        command = [*(launcher or [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                  str(processes)]), str(script)]
    # One thread per process: two ranks on two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, *flags], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def assert_same_weights(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor], label: str,
                        noise: float = 1e-6) -> None:
    """``two`` trained the weights of ``one`` up to the order of floating-point sums.

    Differences are relative to each tensor's largest entry, at least 0.01 (weights start at std 0.02): a tensor
    that stays near zero, such as an attention key bias (its gradient is zero in exact arithmetic, since softmax
    ignores a shift shared by every key), holds only float noise. The all-reduce sums the two halves' gradients in
    another order than one process does; AdamW divides by sqrt(v) + eps, which turns that noise into up to ~1e-4 in
    the few elements whose gradients are near zero (measured, causal LM: 14 of 1.1M elements beyond 1e-6, the
    largest 1.5e-4, in the embedding). Ranks that train apart differ by ~1e-1 almost everywhere. Fewer than 0.1% of
    the elements may differ by more than ``noise``."""
    assert one.keys() == two.keys()
    exact = [name for name in one if not one[name].is_floating_point()]  # e.g. a flow's boolean masks
    assert all(torch.equal(one[name], two[name]) for name in exact), [n for n in exact if not torch.equal(one[n], two[n])]
    relative = {name: (two[name] - one[name]).abs() / max(one[name].abs().max().item(), 0.01) for name in one
                if name not in exact}
    worst_name = max(relative, key=lambda name: relative[name].max().item())
    beyond = sum(int((diff > noise).sum()) for diff in relative.values())
    total = sum(diff.numel() for diff in relative.values())
    logger.info("%s vs 1 process: largest difference %.3g of the tensor's scale (%s); %d of %d elements beyond %g",
                label, relative[worst_name].max().item(), worst_name, beyond, total, noise)
    assert relative[worst_name].max().item() < 1e-3, f"{worst_name} differs by {relative[worst_name].max():.3g}"
    assert beyond < 1e-3 * total, f"{beyond} of {total} elements differ by more than {noise} of their tensor's scale"


@pytest.mark.parametrize("recipe", RECIPES)
def test_two_processes_train_the_weights_of_one(recipe, tmp_path, request):
    base_folder = request.getfixturevalue("base") if recipe == "finetune_lora" else None
    one = recipe_run(recipe, tmp_path / "one", 1, base_folder=base_folder)
    two = recipe_run(recipe, tmp_path / "two", 2, base_folder=base_folder)
    assert_same_weights(one, two, f"{recipe}, 2 processes")


ACCELERATE_CONFIGS = [
    pytest.param("ddp.yaml", id="ddp"),
    # DeepSpeed on 2 CPU processes (its CPU accelerator, gloo). The first run JIT-compiles DeepSpeed's shared-memory
    # communication op (minutes on 2 cores; cached in ~/.cache/torch_extensions afterwards).
    pytest.param("deepspeed_zero2.yaml", id="deepspeed_zero2"),
    pytest.param("deepspeed_zero3.yaml", id="deepspeed_zero3"),
]


@pytest.mark.slow
@pytest.mark.parametrize("config", ACCELERATE_CONFIGS)
def test_accelerate_launch_with_shipped_config_trains_the_weights_of_one(config, tmp_path):
    """``accelerate launch --config_file recipes/configs/accelerate/<config>`` as the README writes it. DeepSpeed:
    its checkpoint holds one ZeRO partition of the optimizer state per process (so DeepSpeed, not DDP, trained),
    and ZeRO-3's final save gathers the partitioned weights into one model.safetensors."""
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="DeepSpeed is an optional extra: pip install 'hfgen[deepspeed]'")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(REPO / "recipes" / "configs" / "accelerate" / config)]
    one = recipe_run("pretrain_causal_lm", tmp_path / "one", 1)
    two = recipe_run("pretrain_causal_lm", tmp_path / "two", 2, launcher=launcher,
                     extra=["--save_strategy", "steps", "--save_steps", "4"])
    # DeepSpeed divides each process's gradients by the number of processes before summing them and clips with a
    # norm summed over the partitions: every element carries ~1e-7 of rounding (measured, ZeRO-2 and ZeRO-3: 5% of
    # 1.1M elements beyond 1e-6 of their tensor's scale, 15-25 beyond 1e-5, the largest 2.7e-4; DDP: 14 beyond 1e-6).
    assert_same_weights(one, two, f"accelerate launch {config}", noise=1e-5 if config.startswith("deepspeed") else 1e-6)
    checkpoint = tmp_path / "two" / "checkpoint-4"
    assert (checkpoint / "trainer_state.json").is_file()
    partitions = sorted(path.name for path in checkpoint.glob("global_step4/*optim_states.pt"))
    if config.startswith("deepspeed"):
        assert len(partitions) == 2 and all(f"zero_pp_rank_{rank}_" in name
                                            for rank, name in enumerate(partitions)), partitions
    else:
        assert not partitions


# RLHF's PPO (hfgen.training.ppo): a whole step -- rollout, advantages, optimisation. Each process rolls out only
# its half of the global batch (other padding, other batch), and the responses are still one process's: their
# sampling noise is keyed by (seed, prompt index, step) (hfgen.training.ppo_sampling), not drawn from each process's
# generator. The two mini-batches are cut from one permutation of the global batch, so a process may hold any number
# of a mini-batch's rows (none included).
PPO_GLOBAL_BATCH = 8


def ppo_update_worker(output_dir: str) -> None:
    """One process of the PPO test (``python tests/test_ddp_equivalence.py OUTPUT_DIR``, under torchrun or alone)."""
    import os

    from safetensors.torch import save_file

    from test_ppo import (HfGenDecoderForCausalLMWithValueHead, PPOTrainer, ppo_args, prompts, target_share,
                          tiny_config, word_tokenizer)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(0)
    args = ppo_args(Path(output_dir), per_device_train_batch_size=PPO_GLOBAL_BATCH // world, num_mini_batches=2,
                    num_ppo_epochs=2, whiten_rewards=True, **({"ddp_backend": "gloo"} if world > 1 else {}))
    trainer = PPOTrainer(args=args, processing_class=word_tokenizer(),
                         model=HfGenDecoderForCausalLMWithValueHead(tiny_config()), train_dataset=prompts(),
                         reward_funcs=target_share)
    rows = range(args.process_index * args.per_device_train_batch_size,
                 (args.process_index + 1) * args.per_device_train_batch_size)
    torch.manual_seed(1 + args.process_index)  # the processes' random streams differ: the rollouts must not care
    trainer.create_optimizer_and_scheduler(num_training_steps=args.num_ppo_epochs)
    model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    rollout = trainer._rollout(model, trainer._collate([trainer.train_dataset[i] for i in rows]))
    trainer._advantages(rollout)
    trainer._optimise(model, rollout)
    if args.process_index == 0:
        weights = trainer.accelerator.unwrap_model(model).state_dict()
        save_file({name: tensor.contiguous() for name, tensor in weights.items()},
                  str(Path(output_dir) / "model.safetensors"))
    trainer.accelerator.wait_for_everyone()


@pytest.mark.slow
def test_ppo_step_of_two_processes_is_that_of_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(Path(__file__).resolve())
    for name, launcher in (("one", [sys.executable]), ("two", [sys.executable, "-m", "torch.distributed.run",
                                                              "--standalone", "--nproc_per_node", "2"])):
        (tmp_path / name).mkdir()
        result = subprocess.run([*launcher, script, str(tmp_path / name)], capture_output=True, text=True,
                                timeout=300, cwd=REPO, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_same_weights(load_file(tmp_path / "one" / "model.safetensors"),
                        load_file(tmp_path / "two" / "model.safetensors"), "PPO step, 2 processes")


# FuseLLM (recipes/fusellm.py): two sources, the target's pre-training and its continued training under each
# method, every stage on Trainer; --batch_size is the global batch (each of N processes takes batch_size / N blocks).
FUSELLM_TINY = ["--source_vocab_sizes", "300", "400", "--source_steps", "2", "--target_pretrain_steps", "2",
                "--continue_steps", "2", "--eval_every", "1", "--eval_blocks", "4", "--seeds", "0", "--topics_only",
                "--batch_size", "4", "--hidden_size", "16", "--block_size", "32"]


@pytest.mark.slow
def test_fusellm_two_processes_train_the_targets_of_one(tmp_path):
    """Under torchrun x2 every stage trains what one process trains: the saved fused target (AvgCE) has the weights
    of one process (up to the order of float sums), and the test perplexity of every method's target (CLM, MinCE,
    AvgCE, and before continued training) is one process's within 1e-4."""
    weights, results = {}, {}
    for processes in (1, 2):
        out = tmp_path / str(processes)
        launch(REPO / "recipes" / "fusellm.py", [*FUSELLM_TINY, "--output_dir", str(out)], processes)
        weights[processes] = load_file(out / "target_avg_ce" / "model.safetensors")
        results[processes] = json.loads((out / "results.json").read_text())["results"]
    assert_same_weights(weights[1], weights[2], "fusellm, 2 processes")
    for method in ("before_continued_training", "clm", "min_ce", "avg_ce"):
        assert results[2][method]["per_seed"] == pytest.approx(results[1][method]["per_seed"], rel=1e-4), method


# The gist experiment (python -m hfgen.training.gist_experiment): the gist model and both controls of each family on
# Trainer, in order; --batch_size is the global batch, and the loss is divided by the step's labelled tokens over all
# processes (Trainer's num_items_in_batch), so ranks whose halves hold other numbers of output tokens still train as
# one model.
GIST_TINY = ["--steps", "3", "--batch_size", "8", "--validation_examples", "8", "--hidden_size", "32",
             "--num_hidden_layers", "1", "--save_models"]


@pytest.mark.slow
def test_gist_experiment_two_processes_train_the_models_of_one(tmp_path):
    """Under torchrun x2 the three masks' models of both families (decoder, encoder-decoder) are one process's (up to
    the order of float sums; measured: at most 1.5e-6 of a tensor's scale, 1 element of 535k beyond 1e-6), and so
    are their validation losses (within 1e-5)."""
    results = {}
    for processes in (1, 2):
        out = tmp_path / str(processes)
        launch("-m", ["hfgen.training.gist_experiment", *GIST_TINY, "--output_dir", str(out)], processes)
        results[processes] = json.loads((out / "results.json").read_text())["rows"]
    for family in ("decoder", "seq2seq"):
        for mask in ("positive", "gist", "negative"):
            assert_same_weights(load_file(tmp_path / "1" / f"{family}_{mask}" / "model.safetensors"),
                                load_file(tmp_path / "2" / f"{family}_{mask}" / "model.safetensors"),
                                f"gist experiment, {family} {mask}, 2 processes")
    for one, two in zip(results[1], results[2]):
        assert two["validation_loss"] == pytest.approx(one["validation_loss"], rel=1e-5), one["family"]


# The image generators besides diffusion (tests/test_image_recipes_accelerate.py has diffusion's): one Accelerate loop
# (recipes/image_common.py) whose random draws are each process's rows of one draw for the global batch.
IMAGE_FLAGS = ["--max_train_steps", "3", "--checkpointing_steps", "3", "--save_images_steps", "0",
               "--num_eval_samples", "0", "--lr_warmup_steps", "0"]
IMAGE_RECIPES = {"train_vae": ["--block_out_channels", "8", "16", "--latent_channels", "2"],
                 "train_flow": ["--num_steps", "2", "--hidden_channels", "8"],
                 "train_gan": ["--base_channels", "8", "--latent_dim", "8"],
                 # dead codes restarted after 2 steps: the restart draws from the encoder outputs of every process.
                 "train_vqvae": ["--block_out_channels", "8", "16", "--latent_channels", "2", "--num_vq_embeddings",
                                 "8", "--dead_code_steps", "2", "--prior_steps", "0"]}


def zero_gradient_parameters(recipe: str) -> set[str]:
    """The tiny VAE's or VQ-VAE's parameters whose exact gradient is zero: a per-channel bias right before a
    GroupNorm of one channel per group (the norm subtracts it again), an attention key bias (softmax ignores a shift
    shared by every key). Float noise moves them (Adam's sqrt(v) scaling), nothing else does. Found in float64 on
    random images, not listed by hand."""
    from hfgen.diffusion.vae_hfgen import HfGenVAEModel
    from hfgen.diffusion.vq_hfgen import HfGenVQModel

    torch.manual_seed(0)
    images = torch.rand(8, 1, 8, 8, dtype=torch.float64) * 2 - 1
    if recipe == "train_vae":
        model = HfGenVAEModel(in_channels=1, latent_channels=2, block_out_channels=(8, 16), sample_size=8,
                              norm_num_groups=8).double()
        model(images, noise=torch.randn(model.latent_shape(8), dtype=torch.float64)).loss.backward()
    else:
        model = HfGenVQModel(latent_channels=2, block_out_channels=(8, 16), num_vq_embeddings=8,
                             dead_code_steps=0).double()
        model(images).loss.backward()
    return {name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().max() < 1e-12}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [
    "train_vae",
    # The flow's 1,080 weights: 0.1% of them is one element; its largest difference is 1.9e-6 (measured).
    "train_flow",
    # The generator's BatchNorm normalises the global batch under DDP (recipes/train_gan.py's GlobalBatchNorm2d).
    "train_gan",
    "train_vqvae"])
def test_image_generators_two_processes_train_the_weights_of_one(recipe, tmp_path):
    """torchrun x2 with a per-process batch of 16 against one process with 32: the saved training checkpoints hold
    the weights of one process (the GAN's two networks each), up to the order of float sums."""
    for processes, batch in ((1, "32"), (2, "16")):
        # train_vqvae saves no sample grids during training (it has no --save_images_steps).
        flags = IMAGE_FLAGS[:4] + IMAGE_FLAGS[6:] if recipe == "train_vqvae" else IMAGE_FLAGS
        launch(REPO / "recipes" / f"{recipe}.py", [*flags, *IMAGE_RECIPES[recipe], "--train_batch_size", batch,
                                                   "--output_dir", str(tmp_path / str(processes))], processes)
    zero_gradient = zero_gradient_parameters(recipe) if recipe in ("train_vae", "train_vqvae") else set()
    assert len(zero_gradient) < 10, zero_gradient
    for path in sorted((tmp_path / "1" / "checkpoint-3").glob("model*.safetensors")):
        one, two = load_file(path), load_file(tmp_path / "2" / "checkpoint-3" / path.name)
        assert_same_weights({k: v for k, v in one.items() if k not in zero_gradient},
                            {k: v for k, v in two.items() if k not in zero_gradient}, f"{recipe} {path.name}",
                            noise=1e-5 if recipe == "train_flow" else 1e-6)


# Tensor parallelism: transformers' from_pretrained(tp_plan="auto") shards the decoder by its base_model_tp_plan
# (hfgen/models/parallel_plans.py) over the launched processes: on GPUs, and on CPUs too (gloo, DTensor shards).
TP_IDS = torch.arange(2 * 12).remainder(200).view(2, 12) + 3  # token ids below the tiny vocabulary's size


def tp_logits(model) -> torch.Tensor:
    """The logits of TP_IDS (an encoder-decoder: TP_IDS into the encoder, their first 5 tokens into the decoder)."""
    ids = TP_IDS.to(model.device)
    extra = {"decoder_input_ids": ids[:, :5]} if model.config.is_encoder_decoder else {}
    with torch.no_grad():
        return model(input_ids=ids, **extra).logits.float().cpu()


def tensor_parallel_worker(folder: str) -> None:
    """One process of the tensor-parallel test (``torchrun --nproc_per_node 2 tests/test_ddp_equivalence.py tp
    FOLDER``): the folder's model loaded with ``tp_plan="auto"``, checked to hold 1/N of its first layer's query
    projection(s); process 0 writes the logits of TP_IDS."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    import hfgen  # noqa: F401  (the Auto classes)

    processes = int(os.environ["WORLD_SIZE"])
    auto = AutoModelForSeq2SeqLM if AutoConfig.from_pretrained(folder).is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_pretrained(folder, tp_plan="auto", dtype=torch.float32).eval()
    assert model.tp_size == processes, model.tp_size
    queries = [module.weight for name, module in model.named_modules() if name.endswith("layers.0.self_attn.q_proj")
               or name.endswith("layers.0.cross_attn.q_proj")]
    assert queries and all(q.to_local().shape[0] * processes == q.shape[0] for q in queries), \
        [(q.shape, q.to_local().shape) for q in queries]
    logits = tp_logits(model)
    if int(os.environ["RANK"]) == 0:
        save_file({"logits": logits.contiguous()}, str(Path(folder) / "tp_logits.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["decoder", "seq2seq"])
def test_tensor_parallel_auto_plan_gives_the_logits_of_one_process(family, tmp_path, request):
    """A saved tiny model -- the decoder of test_peft_recipe's base (rotary, grouped-query attention), or an
    encoder-decoder (both stacks' self-attention and the decoder's cross-attention sharded) -- loaded with
    tp_plan="auto" by 2 processes, each holding half of every sharded weight, gives the logits of the unsharded
    model, up to float noise (measured on CPU: decoder 1.5e-7 of logits up to 0.54, encoder-decoder 1.2e-6 of 4.6).
    On a machine with 2 GPUs the same run shards over them."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from hfgen import HfGenSeq2SeqConfig, HfGenSeq2SeqForConditionalGeneration

    folder = tmp_path / "model"
    if family == "decoder":
        shutil.copytree(request.getfixturevalue("base"), folder)
    else:
        torch.manual_seed(0)
        HfGenSeq2SeqForConditionalGeneration(HfGenSeq2SeqConfig(
            vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            pad_token_id=0, decoder_start_token_id=0)).save_pretrained(folder)
    launch(Path(__file__).resolve(), ["tp", str(folder)], processes=2)
    auto = AutoModelForCausalLM if family == "decoder" else AutoModelForSeq2SeqLM
    expected = tp_logits(auto.from_pretrained(folder, dtype=torch.float32).eval())
    torch.testing.assert_close(load_file(folder / "tp_logits.safetensors")["logits"], expected, atol=1e-5, rtol=1e-5)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # test_ppo's helpers
    if sys.argv[1] == "tp":
        tensor_parallel_worker(sys.argv[2])
    else:
        ppo_update_worker(sys.argv[1])
