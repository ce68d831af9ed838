"""Partial rollouts: chunked generation (`generate_in_chunks`) keeps the engine's contract (log-probs of the final
sequence, EOS and max_new_tokens, seeded reproducibility), and a worker loads weights between chunks, in version
order, checking each loaded version's probe; on a real Ray actor, weights sent while a generation runs change the
versions of its later tokens, whose log-probs are then the new weights'."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from rollout.engine import EngineSpec, make_engine
from rollout.runners.chunked import ChunkedRunner, chunk_seed, generate_in_chunks
from rollout.types import RolloutTask, Sample, SamplingParams
from rollout.workers import RolloutWorker, WorkerPool
from tests.rollout.test_engines import TOL, check_samples, lps, max_err, recompute, tokens

ROOT = Path(__file__).resolve().parents[2]
GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


def test_chunk_seed_is_deterministic_and_distinct():
    assert chunk_seed(7, 0) == 7 and chunk_seed(None, 3) is None
    assert chunk_seed(7, 1) == chunk_seed(7, 1)
    seeds = {chunk_seed(s, k) for s in range(20) for k in range(1, 20)}
    assert len(seeds) == 19 * 20 and all(0 <= x < 2**31 for x in seeds)


def test_chunked_generation_keeps_the_engine_contract(model_dir, prompts, trained_model, tokenizer):
    """Unchanged weights: chunks of 5 up to 12 tokens (5 + 5 + 2) give log-probs that the trainer's recompute of the
    final sequence reproduces, stop at EOS in any chunk, and are seeded; greedy equals one unchunked call."""
    e = make_engine("hf", str(model_dir), seed=0, options={"max_batch": 4})
    e.update_weights(trained_model.state_dict().items(), version=3)  # its EOS ends some greedy samples early
    eos = tokenizer.eos_token_id
    whole = e.generate(prompts, GREEDY)
    chunked = generate_in_chunks(e, prompts, GREEDY, 5)
    check_samples(chunked, prompts, 3, eos, 12)
    assert tokens(chunked) == tokens(whole)
    assert max_err(lps(chunked), lps(whole)) < TOL
    assert {s.finish_reason for s in chunked} == {"stop", "length"}, "EOS handling not exercised"
    assert {len(s.completion_ids) for s in chunked if s.finish_reason == "stop"} - {5, 10}, "no stop inside a chunk"
    for T in (1.0, 0.7):
        sp = SamplingParams(max_new_tokens=12, temperature=T, seed=1)
        out = generate_in_chunks(e, prompts, sp, 5)
        check_samples(out, prompts, 3, eos, 12)
        assert max_err(lps(out), recompute(trained_model, out, T)) < TOL, f"behaviour log-probs at T={T}"
        assert tokens(generate_in_chunks(e, prompts, sp, 5)) == tokens(out), "same seed must reproduce"
        # chunk 0 uses the task's seed: in the engine's first batch (max_batch 4), the first 5 tokens are those of
        # one unchunked call (later batches draw from the generator after a longer first batch)
        assert [c[:5] for c in tokens(out)[:4]] == [c[:5] for c in tokens(e.generate(prompts, sp))[:4]]
        assert tokens(out) != tokens(e.generate(prompts, sp)), "one call: chunks 1 and 2 must draw afresh"
    assert tokens(generate_in_chunks(e, prompts, GREEDY, 12)) == tokens(whole)  # one chunk is one call


def _worker(model_dir, chunk_tokens: int, cls=RolloutWorker) -> RolloutWorker:
    return cls(index=0, engine=EngineSpec("hf", str(model_dir)), runner=ChunkedRunner(chunk_tokens))


def _task(task_id: int, prompts, sampling: SamplingParams) -> RolloutTask:
    return RolloutTask(task_id, prompts, 1, sampling)


def _samples(out) -> list[Sample]:
    """A chunked task's trajectories (one step each) as samples."""
    assert all(len(t.steps) == 1 for t in out.trajectories)
    return [t.as_sample() for t in out.trajectories]


def _probe(prompts, model, n: int = 4):
    """A probe batch (prompt ids, completion ids) and the given model's T=1 log-probs of it."""
    comps = [[5 + i, 6 + i, 7] for i in range(n)]
    fake = [Sample(p, c, [0.0] * len(c), [0] * len(c)) for p, c in zip(prompts[:n], comps)]
    return (list(prompts[:n]), comps), recompute(model, fake, 1.0)


def test_worker_loads_weights_in_version_order(model_dir, prompts, base_model, trained_model):
    """In process (the engine thread's side of the protocol): a late older offer is dropped, an ordered update
    overtaken by a newer load is a no-op whose check reports the version skipped, and an ordered update loads its
    own version (checked exactly) even when a newer offer is pending, which the next call then loads."""
    w = _worker(model_dir, 2)
    base, trained = base_model.state_dict(), trained_model.state_dict()
    probe, base_lp = _probe(prompts, base_model)
    _, trained_lp = _probe(prompts, trained_model)
    sp = SamplingParams(max_new_tokens=4, temperature=1.0, seed=0)
    assert w.offer_weights(trained, 2, probe) >= 0 and w.offer_weights([base], 1, probe) == 0.0  # late: dropped
    out = w.run(_task(0, prompts, sp))
    samples = _samples(out)
    assert out.version == 2 and all(s.versions == [2] * len(s.completion_ids) for s in samples)
    assert max_err(lps(samples), recompute(trained_model, samples, 1.0)) < TOL
    assert w.update_weights([base], 1, probe) == 0.0 and w.engine.version == 2  # never back to an older version
    skipped = w.check(1)
    assert skipped.logprobs is None and skipped.holds == 2
    assert max_err(w.check(2).logprobs, trained_lp) < TOL  # scored when version 2 was loaded
    w.offer_weights([trained], 4, probe)
    w.update_weights([base], 3, probe)  # ordered: loads 3 exactly, 4 stays pending
    assert w.engine.version == 3 and max_err(w.check(3).logprobs, base_lp) < TOL
    assert w.score(*probe, 1.0).version == 4  # the next engine call loads the pending offer
    assert max_err(w.check(4).logprobs, trained_lp) < TOL


class MidTaskOffer(RolloutWorker):
    """Offers the trained weights (version 1) to itself just before chunk 1, as the weights thread would."""

    weights, probe = None, None

    def _between_calls(self, k: int) -> None:
        if k == 1:
            self.offer_weights(self.weights, 1, self.probe)
        super()._between_calls(k)


def test_worker_mixes_versions_between_chunks_in_process(model_dir, prompts, base_model, trained_model):
    w = _worker(model_dir, 4, MidTaskOffer)
    probe, _ = _probe(prompts, base_model)
    _, trained_lp = _probe(prompts, trained_model)
    w.weights, w.probe = trained_model.state_dict(), probe
    out = w.run(_task(0, prompts, SamplingParams(max_new_tokens=10, temperature=1.0, seed=2)))
    _check_mixed(_samples(out), 4, base_model, trained_model)
    assert max_err(w.check(1).logprobs, trained_lp) < TOL


def _check_mixed(samples, c: int, old_model, new_model) -> None:
    """Tokens before position c came from version 0 (old weights), the rest from version 1 (new weights)."""
    assert any(len(s.completion_ids) > c for s in samples), "no sample outlived the first chunk"
    for s in samples:
        n = len(s.completion_ids)
        assert s.versions == [0] * min(n, c) + [1] * (n - c if n > c else 0)
    old, new = recompute(old_model, samples, 1.0), recompute(new_model, samples, 1.0)
    behav = lps(samples)
    assert max_err([b[:c] for b in behav], [o[:c] for o in old]) < TOL, "early tokens: the old weights' log-probs"
    assert max_err([b[c:] for b in behav], [x[c:] for x in new]) < TOL, "later tokens: the new weights' log-probs"
    assert max_err([b[c:] for b in behav], [o[c:] for o in old]) > 1e-2, "the update changed nothing: cannot fail"


class WaitsForWeights(RolloutWorker):
    """A Ray worker whose first generation, once chunk 0 is done, waits (at most 120 s) until weights have been
    offered, so the update lands mid-generation however the machine is loaded: `reached()` (on the weights
    thread) tells the test that chunk 0 is done."""

    gated = False

    def reached(self) -> bool:
        return self.gated

    def _between_calls(self, k: int) -> None:
        if k == 1 and not self.gated:
            self.gated = True
            t0 = time.monotonic()
            while True:
                with self._lock:
                    if self._pending is not None:
                        break
                if time.monotonic() - t0 > 120:
                    raise TimeoutError("no weights were offered within 120 s")
                time.sleep(0.01)
        super()._between_calls(k)


def _wait_until(cond, what: str, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("engine", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_ray_worker_loads_weights_sent_mid_generation(engine, local_ray, model_dir, prompts, base_model,
                                                      trained_model):
    """The real path: a threaded Ray actor; the controller's publish sequence (offer on the weights thread, then the
    ordered update and check) sent while a generation is under way."""
    env = {"PYTHONPATH": str(ROOT)}  # the actor imports this module (WaitsForWeights)
    if engine == "vllm":
        from rl.errors import OrchardError
        from rollout.vllm_engine import import_vllm

        try:
            import_vllm()
        except OrchardError as e:
            pytest.skip(f"vLLM is not importable here: {e}")
        env.update({k: v for k, v in os.environ.items() if k.startswith("VLLM_")})
    pool = WorkerPool("ray", 1, EngineSpec(engine, str(model_dir)), ChunkedRunner(4), worker_cls=WaitsForWeights,
                      env_vars=env)
    try:
        probe, _ = _probe(prompts, base_model)
        _, trained_lp = _probe(prompts, trained_model)
        assert pool.get(pool.call(0, "info"), 0).version == 0
        sp = SamplingParams(max_new_tokens=12, temperature=1.0, seed=5)
        gen = pool.call(0, "run", _task(0, prompts, sp))
        import ray

        actor = pool.workers[0]
        _wait_until(lambda: ray.get(actor.reached.options(concurrency_group="weights").remote()), "chunk 0")
        box = [pool.put(trained_model.state_dict())]
        offer = pool.call(0, "offer_weights", box, 1, probe)
        update = pool.call(0, "update_weights", box, 1, probe)
        check = pool.call(0, "check", 1)
        assert pool.get(offer, 0) > 0  # fetched on the weights thread while the engine thread waited after chunk 0
        out = pool.get(gen, 0)
        _check_mixed(_samples(out), 4, base_model, trained_model)
        assert out.version == 1 and out.load_s > 0
        assert pool.get(update, 0) == 0.0  # in call order after the generation, which had loaded version 1
        assert max_err(pool.get(check, 0).logprobs, trained_lp) < TOL
        again = _samples(pool.get(pool.call(0, "run", _task(1, prompts, sp)), 0))
        assert all(s.versions == [1] * len(s.completion_ids) for s in again)
    finally:
        pool.close()


# --- vLLM --------------------------------------------------------------------------------------------------------
@pytest.mark.vllm
def test_vllm_chunked_generation_keeps_the_engine_contract(vllm_pool, prompts, base_model, tokenizer):
    e = vllm_pool.get()
    whole = e.generate(prompts, GREEDY)
    chunked = generate_in_chunks(e, prompts, GREEDY, 5)
    check_samples(chunked, prompts, e.version, tokenizer.eos_token_id, 12)
    assert tokens(chunked) == tokens(whole)
    assert max_err(lps(chunked), recompute(base_model, chunked, 0.0)) < TOL
    sp = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)
    out = generate_in_chunks(e, prompts, sp, 5)
    check_samples(out, prompts, e.version, tokenizer.eos_token_id, 12)
    assert max_err(lps(out), recompute(base_model, out, 1.0)) < TOL
    assert tokens(generate_in_chunks(e, prompts, sp, 5)) == tokens(out), "same seed must reproduce"
    assert [c[:5] for c in tokens(out)] == [c[:5] for c in tokens(e.generate(prompts, sp))]
