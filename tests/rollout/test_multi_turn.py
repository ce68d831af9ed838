"""The multi-turn runner on a real HF engine (a random 3M Llama and the ChatML tiny-chat): ids are the engine's,
turn by turn, never re-tokenised; observations are outside the policy tokens; context overflow is named."""
from pathlib import Path

import pytest
import torch

from rl.zoo import build as build_zoo
from rollout.hf_engine import HFEngine
from rollout.logprobs import left_pad, policy_logprobs
from rollout.runners import RUNNERS
from rollout.runners.multi_turn import MultiTurnRunner, episode_ids
from rollout.types import RolloutTask, SamplingParams

FIXTURES = Path(__file__).parents[1] / "envs" / "fixtures" / "user_text_envs.py"
SAMPLING = SamplingParams(max_new_tokens=8, temperature=1.0, seed=3)


def run(model_dir, env="twenty_questions", **kw):
    runner = MultiTurnRunner(env=env, tokenizer_path=str(model_dir), **kw)
    engine = HFEngine(str(model_dir), seed=0)
    return runner, engine, runner.run_episodes(engine, [0, 1, 2, 3], SAMPLING)


def test_registered():
    assert RUNNERS.get("multi_turn") is MultiTurnRunner


def test_ids_are_the_engines_never_retokenised(model_dir, base_model):
    runner, engine, trajs = run(model_dir, env_kwargs={"max_turns": 4}, max_context=256)
    tok = runner.tok
    changed_by_retokenising = 0
    for traj in trajs:
        assert 1 <= len(traj.steps) <= 4
        for a, b in zip(traj.steps, traj.steps[1:]):
            # the next context is exactly: context + the engine's ids + the observation's ids
            assert b.context_ids == a.context_ids + a.token_ids + runner.observation_ids(a.info["observation"],
                                                                                          a.finish_reason == "stop")
        for s in traj.steps:
            assert len(s.token_ids) == len(s.logprobs) == len(s.versions) and set(s.versions) == {0}
            text = tok.decode(s.token_ids, skip_special_tokens=True)
            changed_by_retokenising += tok(text, add_special_tokens=False)["input_ids"] != s.token_ids
        # the recorded behaviour log-probs are those of these very ids (T=1) under the policy
        ids, attn, P = left_pad([s.context_ids for s in traj.steps], [s.token_ids for s in traj.steps], 0)
        lp = policy_logprobs(base_model, ids, attn, P, 1.0)
        for k, s in enumerate(traj.steps):
            assert torch.allclose(lp[k, :len(s.token_ids)], torch.tensor(s.logprobs), atol=1e-4)
    # the test means something: decoding and re-encoding would have changed ids (the EOS, special tokens)
    assert changed_by_retokenising > 0


def test_episode_ids_mask_only_policy_tokens(model_dir):
    runner, _, trajs = run(model_dir, env_kwargs={"max_turns": 3}, max_context=256)
    for traj in trajs:
        ids, mask, turn = episode_ids(traj)
        assert sum(mask) == sum(len(s.token_ids) for s in traj.steps)
        for t, s in enumerate(traj.steps):
            start = len(s.context_ids)
            assert ids[start:start + len(s.token_ids)] == s.token_ids and set(turn[start:start + len(s.token_ids)]) == {t}
            if t + 1 < len(traj.steps):  # observation tokens between turns are masked out
                obs_end = len(traj.steps[t + 1].context_ids)
                assert mask[start + len(s.token_ids):obs_end] == [0] * (obs_end - start - len(s.token_ids))


def test_context_overflow_ends_the_episode_with_a_named_reason(model_dir):
    _, _, trajs = run(model_dir, max_turns=20, max_context=60)
    ends = [t.steps[-1].info["end"] for t in trajs]
    assert "context_overflow" in ends
    for t in trajs:
        assert t.steps[-1].done and all(len(s.context_ids) + 8 <= 60 for s in t.steps)


def test_chat_template_formats_the_history(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHARD_CACHE", str(tmp_path))
    chat_dir = build_zoo("tiny-chat")
    runner, _, trajs = run(chat_dir, env_kwargs={"max_turns": 3}, max_context=512)
    tok = runner.tok
    first = tok.decode(trajs[0].steps[0].context_ids)
    assert first == "<|im_start|>user\nGuess the object.\n<|im_end|>\n<|im_start|>assistant\n"
    for traj in trajs:
        if len(traj.steps) > 1:
            s = traj.steps[1]
            text = tok.decode(s.context_ids)
            assert text.endswith(f"<|im_start|>user\n{traj.steps[0].info['observation']}<|im_end|>\n<|im_start|>assistant\n")
            assert text.count("<|im_end|>") == 3  # first user turn, the assistant turn, the observation


def test_worker_task_form_and_reproducible(model_dir):
    runner = MultiTurnRunner(env=f"{FIXTURES}:CountDown", env_kwargs={"n": 2}, tokenizer_path=str(model_dir),
                             max_turns=5, max_context=256)
    engine = HFEngine(str(model_dir), seed=0)
    task = RolloutTask(task_id=0, prompts=[[5], [6]], group_size=2, sampling=SAMPLING)
    a = runner.run(engine, task, between=lambda k: None)
    b = runner.run(engine, task, between=lambda k: None)
    assert len(a) == 4 and [len(t.steps) for t in a] == [3, 3, 2, 2]  # CountDown(n=2): n + seed % 2 turns
    assert [s.token_ids for t in a for s in t.steps] == [s.token_ids for t in b for s in t.steps]
    with pytest.raises(ValueError, match="prompt entry must be \\[env_seed\\]"):
        runner.run(engine, RolloutTask(0, [[1, 2]], 1, SAMPLING), between=lambda k: None)


def test_episodes_through_the_real_controller_and_worker(model_dir, base_model):
    """Prompt entries [env_seed] through RolloutController + a local worker: episodes come back in groups, scored by
    their env return, every token tagged with the policy version that produced it (within the staleness bound)."""
    from rollout.controller import RolloutController
    from rollout.engine import EngineSpec
    from rollout.workers import WorkerPool
    from tests.rollout.test_weight_sync import Source
    from trainers.grpo.batch import PromptSampler

    runner = MultiTurnRunner(env="twenty_questions", env_kwargs={"max_turns": 3}, tokenizer_path=str(model_dir),
                             max_context=256)

    def score(task, trajectories):
        r = torch.tensor([sum(s.reward for s in t.steps) for t in trajectories])
        return r, torch.ones(len(trajectories), dtype=torch.bool), {}

    pool = WorkerPool("local", 1, EngineSpec("hf", str(model_dir)), runner)
    ctrl = RolloutController(pool, prompt_ids=[[s] for s in range(10)], sampler=PromptSampler(10, 0), score_fn=score,
                             group_size=2, groups_per_step=2, max_staleness=1, prompts_per_task=1,
                             sampling=SamplingParams(max_new_tokens=4, temperature=1.0), seed=0, last_step=2)
    try:
        ctrl.publish(Source(base_model), 0)
        for step in (1, 2):
            groups, _ = ctrl.collect(step)
            assert len(groups) == 2
            for g in groups:
                assert len(g.trajectories) == 2
                for t, r in zip(g.trajectories, g.rewards):
                    assert len(t.steps) == 3 and float(r) == -3.0  # random policy: 3 turns, no success
                    assert all(step - 2 <= v <= step - 1 for v in t.versions)
            ctrl.publish(Source(base_model), step)
    finally:
        ctrl.close()
