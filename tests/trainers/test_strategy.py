"""The data-parallel strategy objects on a real model: which one a rank gets, what wrap / grad_sync / state dicts /
save / load_optimizer do under each (DDP and FSDP2 in a real one-rank gloo process group), and the policy's refusal
to resume optimizer state written in another format. 2 ranks against 1: tests/trainers/grpo/test_ranks.py."""
import socket

import pytest
import torch

from trainers.grpo.config import GRPOConfig
from trainers.grpo.policy import OPTIM_FILE, build_policy, read_weights
from trainers.strategy import DDP, FSDP2, Single, make_strategy, optimizer_format_of


@pytest.fixture(scope="module")
def model_dir():
    from rl.zoo import resolve_model_path

    return resolve_model_path("random-3m")


@pytest.fixture
def gloo_world_of_one():
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _policy(model_dir, strategy):
    cfg = GRPOConfig.model_validate({"model": {"path": str(model_dir)}, "cluster": {"backend": "local"}})
    return build_policy(cfg, model_dir, torch.device("cpu"), strategy)


def _step(policy):
    """One optimizer step on a tiny batch, so the optimizer has state to save."""
    ids = torch.tensor([[5, 6, 7, 8]])
    policy.fwd(input_ids=ids, labels=ids).loss.backward()
    policy.optimizer.step()
    policy.optimizer.zero_grad()


def test_make_strategy_picks_single_for_one_rank():
    assert isinstance(make_strategy("ddp", 1), Single) and isinstance(make_strategy("fsdp2", 1), Single)
    assert isinstance(make_strategy("ddp", 2), DDP)
    fsdp = make_strategy("fsdp2", 4)
    assert isinstance(fsdp, FSDP2) and fsdp.world == 4
    with pytest.raises(ValueError, match=r"cluster\.trainer_strategy: unknown strategy 'zero3'"):
        make_strategy("zero3", 2)
    assert [s.name for s in (Single(), DDP(), FSDP2(2))] == ["single", "ddp", "fsdp2"]
    # DDP's optimizer state is a plain torch one (resumable on one rank and back); FSDP2's is keyed by names
    assert optimizer_format_of("single") == optimizer_format_of("ddp") == Single.optimizer_format
    assert optimizer_format_of("fsdp2") == FSDP2.optimizer_format != Single.optimizer_format


def test_single_saves_and_reloads_model_and_optimizer(model_dir, tmp_path):
    p = _policy(model_dir, Single())
    assert p.fwd is p.model and isinstance(p.strategy, Single)
    with p.strategy.grad_sync(p.fwd, last=False):  # nothing to synchronise on one rank
        pass
    _step(p)
    p.save(tmp_path, write=True, world=1)
    saved = torch.load(tmp_path / OPTIM_FILE, weights_only=False)
    assert saved["strategy"] == "single" and saved["world"] == 1
    weights = read_weights(tmp_path / "model")
    assert all(torch.equal(weights[k], v) for k, v in p.merged_state_dict().items() if k in weights)
    q = _policy(model_dir, Single())
    q.load_optimizer(tmp_path)
    a, b = p.optimizer.state_dict()["state"], q.optimizer.state_dict()["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[i]["exp_avg"], b[i]["exp_avg"]) for i in a)


def test_optimizer_state_of_another_format_is_refused(model_dir, tmp_path):
    from dataclasses import replace

    p = _policy(model_dir, Single())
    p.save(tmp_path, write=True, world=1)
    with pytest.raises(RuntimeError, match=r"holds single optimizer state; this run uses "
                                           r"cluster\.trainer_strategy=fsdp2"):
        replace(p, strategy=FSDP2(2)).load_optimizer(tmp_path)  # refused before anything is loaded


def test_ddp_wraps_and_skips_the_all_reduce_before_the_last_micro_batch(model_dir, gloo_world_of_one):
    from torch.nn.parallel import DistributedDataParallel

    p = _policy(model_dir, DDP())
    assert isinstance(p.fwd, DistributedDataParallel) and p.fwd.module is p.model
    with p.strategy.grad_sync(p.fwd, last=False):
        assert not p.fwd.require_backward_grad_sync
    with p.strategy.grad_sync(p.fwd, last=True):
        assert p.fwd.require_backward_grad_sync
    pre, sd = read_weights(model_dir), p.merged_state_dict()  # the plain model's names, no DDP "module." prefix
    assert pre.keys() <= sd.keys() and all(torch.equal(sd[k], v) for k, v in pre.items())


def test_fsdp2_shards_in_place_and_gathers_full_state(model_dir, gloo_world_of_one, tmp_path):
    from torch.distributed.tensor import DTensor

    pre = {k: v.clone() for k, v in _policy(model_dir, Single()).model.state_dict().items()}
    p = _policy(model_dir, FSDP2(1))
    assert p.fwd is p.model and all(isinstance(w, DTensor) for w in p.model.parameters())
    sd = p.merged_state_dict()  # full, plain tensors on CPU
    assert set(sd) == set(pre) and all(not isinstance(v, DTensor) and torch.equal(v, pre[k]) for k, v in sd.items())
    _step(p)
    p.save(tmp_path, write=True, world=1)
    saved = torch.load(tmp_path / OPTIM_FILE, weights_only=False)
    assert saved["strategy"] == "fsdp2" and set(saved["optimizer"]["state"]) <= set(pre)  # keyed by names
    after, written = p.merged_state_dict(), read_weights(tmp_path / "model")  # the full weights, after the step
    assert all(torch.equal(written[k], after[k]) for k in written)
    assert not all(torch.equal(after[k], pre[k]) for k in pre)
    q = _policy(model_dir, FSDP2(1))
    q.load_optimizer(tmp_path)
    assert len(q.optimizer.state) == len(p.optimizer.state) > 0
