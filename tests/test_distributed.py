"""Multi-GPU logic on CPU: two gloo processes stand in for two GPUs under nnU-Net's DDP."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from nnunetv2_rndpo.config import RNDPOConfig
from nnunetv2_rndpo.distributed import barrier, broadcast_from_rank0, rank_and_world
from nnunetv2_rndpo.pipeline import split_cases
from nnunetv2_rndpo.trainer import nnUNetTrainerRNDPO

BATCH, CLASSES = 4, 3


def test_single_process_is_the_identity():
    assert rank_and_world() == (0, 1)
    barrier()
    assert broadcast_from_rank0({"pairs": [1]}) == {"pairs": [1]}


def make_inputs() -> tuple[torch.Tensor, torch.Tensor, dict, dict]:
    """A batch whose pairs disagree on regions of very different size, a policy and a perturbed reference."""
    g = torch.Generator().manual_seed(0)
    data = torch.randn(BATCH, 1, 12, 12, generator=g)
    chosen = torch.randint(0, CLASSES, (BATCH, 12, 12), generator=g)
    rejected = chosen.clone()
    for b, size in enumerate((2, 9, 30, 80)):
        flat = rejected[b].view(-1)
        flat[:size] = (flat[:size] + 1) % CLASSES
    policy = torch.nn.Conv2d(1, CLASSES, 3, padding=1)
    reference = torch.nn.Conv2d(1, CLASSES, 3, padding=1)
    return data, torch.stack([chosen, rejected], 1), policy.state_dict(), reference.state_dict()


def step_loss(network, reference, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The trainer's own ``preference_step`` (RN-DPO, every anchor but sft on) on a stand-in trainer."""
    trainer = SimpleNamespace(
        phase=SimpleNamespace(reference=reference),
        label_manager=SimpleNamespace(has_regions=False, foreground_regions=None, ignore_label=None),
        rndpo_config=RNDPOConfig(normalization="region", min_region_voxels=1, consistency_weight=1.0,
                                 agreement_weight=1.0),
    )
    loss, _ = nnUNetTrainerRNDPO.preference_step(trainer, data, network(data), [target])
    return loss


def ddp_worker(rank: int, world: int, port: int, inputs, result_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    data, target, policy_state, reference_state = inputs
    policy, reference = torch.nn.Conv2d(1, CLASSES, 3, padding=1), torch.nn.Conv2d(1, CLASSES, 3, padding=1)
    policy.load_state_dict(policy_state)
    reference.load_state_dict(reference_state)
    network = DistributedDataParallel(policy)
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)  # nnU-Net splits the batch evenly
    step_loss(network, reference.requires_grad_(False), data[part], target[part]).backward()
    pairs = broadcast_from_rank0([f"pairs mined on rank {rank}"])
    cases = split_cases([f"case_{i}" for i in range(5)], world, rank)
    everyone = [None] * world
    dist.all_gather_object(everyone, cases)
    barrier()
    if rank == 0:
        torch.save({"grads": [p.grad for p in policy.parameters()], "pairs": pairs, "cases": everyone}, result_file)
    else:
        assert pairs == ["pairs mined on rank 0"]
    dist.destroy_process_group()


def test_ddp_gradient_equals_the_full_batch_gradient(tmp_path):
    inputs = make_inputs()
    data, target, policy_state, reference_state = inputs
    policy, reference = torch.nn.Conv2d(1, CLASSES, 3, padding=1), torch.nn.Conv2d(1, CLASSES, 3, padding=1)
    policy.load_state_dict(policy_state)
    reference.load_state_dict(reference_state)
    step_loss(policy, reference.requires_grad_(False), data, target).backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result_file = str(tmp_path / "rank0.pt")
    mp.spawn(ddp_worker, args=(2, port, inputs, result_file), nprocs=2, join=True)
    result = torch.load(result_file)
    for single, distributed in zip((p.grad for p in policy.parameters()), result["grads"], strict=True):
        assert single.abs().max() > 0
        torch.testing.assert_close(distributed, single, rtol=1e-5, atol=1e-7)
    assert result["pairs"] == ["pairs mined on rank 0"]
    assert result["cases"] == [["case_0", "case_2", "case_4"], ["case_1", "case_3"]]
