"""Data parallelism: two gloo ranks, each on half of a global batch, reproduce one process on all of it.

Masks are keyed by (seed, epoch, sample_id, instance), so no per-rank seed is needed: an example's
masks are the same on whichever rank runs it (lora_dropout/tasks/instruction.py, "Mask seeding under data
parallelism"). DistributedDataParallel averages the ranks' gradients; with equal halves that is the
gradient of the global mean loss, which is what the single process computes.
"""

import gc
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from lora_dropout import LoraDropoutConfig, apply_lora_dropout
from lora_dropout.method.objective import n_instance_loss
from lora_dropout.tasks.alpaca import collate_instructions, encode_instruction
from tests.tiny import reviews, tiny_causal_lm, tiny_tokenizer

WORLD = 2
CONFIG = LoraDropoutConfig(dropout_rate=0.4, n_instances=3)
WORDS = ("good", "bad", "superb", "awful", "lovely", "dull")
EPOCH = 2
# A hung rendezvous or a deadlocked child fails the test instead of stalling the suite.
DEADLINE_S = 300


def _setup():
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, b_scale=5.0)
    apply_lora_dropout(model, CONFIG)
    model.train()
    # Global sample ids 7..12, not positions: rank 1's first example is example 10 on every rank.
    records = reviews(WORDS, first_id=7)
    return tok, model, records


def _collate(tok, records):
    encoded = [encode_instruction(tok, r, 64) for r in records]
    return collate_instructions(encoded, pad_token_id=tok.pad_token_id)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _rank_step(rank: int) -> dict:
    """One N-instance step of this rank's half under DDP: the global mean loss, the gathered
    per-example losses and the (all-reduced) gradients."""
    tok, model, records = _setup()
    ddp = DistributedDataParallel(model)
    half = len(records) // WORLD
    # Each rank collates its own half, so its padding differs from the global batch's too.
    batch = _collate(tok, records[rank * half : (rank + 1) * half])
    result = n_instance_loss(ddp, batch, epoch=EPOCH)
    result.loss.backward()  # DDP all-reduces the gradients to their mean over ranks
    loss = result.loss.detach().clone()
    dist.all_reduce(loss)
    pieces = [torch.empty_like(result.per_example) for _ in range(WORLD)]
    dist.all_gather(pieces, result.per_example)
    return {"loss": loss / WORLD, "per_example": torch.cat(pieces, dim=1), "grads": _grads(model)}


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        # The DDP wrapper lives and dies inside _rank_step: a DDP reducer still alive when the process
        # group is destroyed was seen to hang the worker's exit.
        measured = _rank_step(rank)
        gc.collect()  # and any reference cycle through it
        if rank == 0:
            torch.save(measured, os.path.join(out, "ddp.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(out) -> None:
    # spawn: each rank is a fresh interpreter that inherits no threads, locks or CUDA state from the test
    # process. Re-importing torch, transformers and peft there is most of this test's time (8-30 s on two
    # cores, depending on load).
    context = mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=1):  # re-raises a child's exception
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD} DDP workers did not finish within {DEADLINE_S} s")


def test_two_gloo_ranks_match_one_process_on_the_global_batch(tmp_path):
    _run_workers(tmp_path)
    ddp = torch.load(tmp_path / "ddp.pt")

    tok, model, records = _setup()
    single = n_instance_loss(model, _collate(tok, records), epoch=EPOCH)
    single.loss.backward()
    grads = _grads(model)

    torch.testing.assert_close(ddp["per_example"], single.per_example, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ddp["loss"], single.loss.detach(), rtol=1e-5, atol=1e-6)
    assert ddp["grads"].keys() == grads.keys() and any(float(g.abs().max()) > 1e-4 for g in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # the instances differ, so a rank-dependent mask would have shown
    assert float(single.per_example.std(dim=0).max()) > 1e-2
