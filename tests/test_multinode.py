"""Two machines, simulated on this one: ``torchrun --nnodes 2 --nproc_per_node 1`` started twice with a c10d
rendezvous on localhost, as the README's multi-node command runs on two hosts (there: ``--rdzv_endpoint`` is the
first host's address). The two nodes together must train the weights of one process with the same global batch
(the comparison and its tolerance are tests/test_ddp_equivalence.py's)."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import pytest

from test_ddp_equivalence import assert_same_weights, recipe_run


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_train_the_weights_of_one_process(tmp_path: Path):
    one = recipe_run("pretrain_causal_lm", tmp_path / "one", 1)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                "--rdzv_backend", "c10d", "--rdzv_endpoint", f"localhost:{_free_port()}", "--rdzv_id", "hfgen-test"]
    # Both nodes at once (each waits for the other at the rendezvous); whichever becomes rank 0 saves the model.
    results: dict[int, object] = {}

    def node(index: int) -> None:
        try:
            results[index] = recipe_run("pretrain_causal_lm", tmp_path / "two_nodes", 2, launcher=launcher)
        except BaseException as error:  # reported below, from the test's own thread
            results[index] = error

    threads = [threading.Thread(target=node, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for outcome in results.values():
        if isinstance(outcome, BaseException):
            raise outcome
    assert_same_weights(one, results[0], "2 nodes x 1 process")
