"""A small control task simulated inside the project, for the Gato-like decoder (``hfgen_gato``): a grid world with
a scripted expert, and its episodes as Gato token streams.

Grid world: an agent and a goal on a ``size`` x ``size`` grid; actions 0..3 move up, down, left, right (a move
into the wall leaves the agent in place). Reaching the goal ends the episode with reward +1; every step costs
``step_cost``; an episode lasts at most ``max_steps``. The expert moves along the larger coordinate gap first
(shortest path); the random policy picks uniformly.

Episode tokens (Gato, section 2.2): per time step the observation's values (agent x, y, goal x, y as continuous
values, mu-law companded and binned), the separator ``|``, then the action (an integer shifted into the bin range).
Loss is on the action tokens only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from ..models.configuration_hfgen_gato import MODALITIES
from ..models.modeling_hfgen_gato import discretize

MOVES = ((0, -1), (0, 1), (-1, 0), (1, 0))  # up, down, left, right
NUM_ACTIONS = len(MOVES)


@dataclass
class GridWorld:
    size: int = 5
    max_steps: int = 16
    step_cost: float = 0.05
    seed: int = 0
    agent: tuple[int, int] = field(init=False, default=(0, 0))
    goal: tuple[int, int] = field(init=False, default=(0, 0))

    def __post_init__(self):
        if self.size < 2:
            raise ValueError(f"GridWorld size must be at least 2, got {self.size}.")
        self.rng = random.Random(self.seed)

    def reset(self) -> list[float]:
        cells = [(x, y) for x in range(self.size) for y in range(self.size)]
        self.agent, self.goal = self.rng.sample(cells, 2)
        self.steps = 0
        return self.observation()

    def observation(self) -> list[float]:
        return [float(v) for v in (*self.agent, *self.goal)]

    def step(self, action: int) -> tuple[list[float], float, bool]:
        if not 0 <= action < NUM_ACTIONS:
            raise ValueError(f"Actions are 0..{NUM_ACTIONS - 1} (up, down, left, right), got {action}.")
        dx, dy = MOVES[action]
        x, y = self.agent
        self.agent = (min(max(x + dx, 0), self.size - 1), min(max(y + dy, 0), self.size - 1))
        self.steps += 1
        reached = self.agent == self.goal
        reward = (1.0 if reached else 0.0) - self.step_cost
        return self.observation(), reward, reached or self.steps >= self.max_steps


def expert_action(observation: list[float]) -> int:
    """The scripted expert: close the larger gap first (a shortest path)."""
    ax, ay, gx, gy = observation
    if abs(gx - ax) >= abs(gy - ay) and gx != ax:
        return 3 if gx > ax else 2
    return 1 if gy > ay else 0


def random_action(observation: list[float], rng: random.Random) -> int:
    return rng.randrange(NUM_ACTIONS)


def run_episode(env: GridWorld, policy) -> tuple[float, list[tuple[list[float], int]]]:
    """Return and the (observation, action) pairs of one episode under ``policy(observation, history)``."""
    observation, total, done, history = env.reset(), 0.0, False, []
    while not done:
        action = policy(observation, history)
        history.append((observation, action))
        observation, reward, done = env.step(action)
        total += reward
    return total, history


def timestep_tokens(config, observation: list[float], action: int | None) -> tuple[list[int], list[int], list[bool]]:
    """One time step as (token ids, modality ids, is-action-target flags); ``action=None``: up to the separator."""
    bins = discretize(torch.tensor(observation), config.num_bins, config.mu_law_mu, config.mu_law_max)
    ids = [config.first_bin_id + int(b) for b in bins] + [config.separator_token_id]
    modality = [MODALITIES.index("continuous")] * len(bins) + [MODALITIES.index("text")]
    target = [False] * len(ids)
    if action is not None:
        ids.append(config.first_bin_id + action)
        modality.append(MODALITIES.index("action"))
        target.append(True)
    return ids, modality, target


def episode_tokens(config, history: list[tuple[list[float], int]]) -> tuple[list[int], list[int], list[bool]]:
    ids, modality, target = [], [], []
    for observation, action in history:
        i, m, t = timestep_tokens(config, observation, action)
        ids += i
        modality += m
        target += t
    return ids, modality, target


@torch.no_grad()
def model_action(model, history: list[tuple[list[float], int]], observation: list[float]) -> int:
    """The model's greedy action: its logits over the action tokens after the episode so far and ``|``."""
    config = model.config
    ids, modality, _ = episode_tokens(config, history)
    i, m, _ = timestep_tokens(config, observation, None)
    input_ids, modality_ids = torch.tensor([ids + i]), torch.tensor([modality + m])
    logits = model(input_ids=input_ids, modality_ids=modality_ids, logits_to_keep=1).logits[0, -1]
    return int(logits[config.first_bin_id:config.first_bin_id + NUM_ACTIONS].argmax())


def evaluate_policies(model, episodes: int = 50, seed: int = 1234, **env_kwargs) -> dict[str, float]:
    """Mean return of the model, the expert and a random policy on the same ``episodes`` start states."""
    results = {}
    rng = random.Random(seed)
    policies = {
        "expert": lambda obs, hist: expert_action(obs),
        "random": lambda obs, hist: random_action(obs, rng),
        "model": lambda obs, hist: model_action(model, hist, obs),
    }
    for name, policy in policies.items():
        env = GridWorld(seed=seed, **env_kwargs)
        results[f"{name}_return"] = sum(run_episode(env, policy)[0] for _ in range(episodes)) / episodes
    return results
