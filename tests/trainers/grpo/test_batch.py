"""Prompt sampler (resumable, seeded) and collation of samples into the padded batch."""
import torch

from rollout.types import Sample
from trainers.grpo.batch import PromptSampler, collate


def test_sampler_covers_each_epoch_and_resumes_exactly():
    s = PromptSampler(5, seed=3)
    first = s.next(5)
    assert sorted(first) == [0, 1, 2, 3, 4]
    s.next(2)
    state = s.state_dict()
    expected = s.next(7)
    r = PromptSampler(5, seed=3)
    r.load_state_dict(state)
    assert r.next(7) == expected
    assert PromptSampler(5, seed=4).next(5) != first or PromptSampler(5, seed=5).next(5) != first


def test_collate_pads_prompts_left_and_completions_right():
    samples = [Sample([5, 6, 7], [8, 2], [-0.5, -0.25], [3, 3], "stop"),
               Sample([9], [10, 11, 12], [-1.0, -2.0, -3.0], [2, 3, 3], "length")]
    b = collate(samples, torch.tensor([1.0, -1.0]), torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), pad_id=0)
    assert b.prompt_len == 3
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 2, 0], [0, 0, 9, 10, 11, 12]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert b.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert b.behav_logprobs.tolist() == [[-0.5, -0.25, 0.0], [-1.0, -2.0, -3.0]]
    assert b.versions.tolist() == [[3, 3, -1], [2, 3, 3]]
    assert len(b.select(slice(1, 2))) == 1
