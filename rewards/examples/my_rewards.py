"""An example user reward file: copy it, edit the function, point the config at it.

    rl train configs/grpo_tiny.yaml reward=rewards/examples/my_rewards.py:close_enough

or, weighted beside a built-in, in YAML:

    reward:
      - fn: exact_match
      - fn: rewards/examples/my_rewards.py:close_enough
        weight: 0.5

The signature is TRL's, so a function written for TRL's GRPOTrainer works unchanged (and this one works there):
every dataset column (here `answer`) arrives as a keyword argument, one value per completion. Return one float per
completion, or None where the reward does not apply. Do not catch errors to return 0.0: an exception stops the job
with a message naming the function and the sample (or, with `on_reward_error=drop`, drops that sample), which is
what you want when a reward is wrong. `async def` works too.
"""


def close_enough(prompts: list[str], completions: list[str], answer: list[str], **columns) -> list[float | None]:
    """1.0 for the exact answer, 0.5 when off by one, 0.0 otherwise (also when the completion is not an integer);
    None (not applicable) when the reference answer is not an integer."""
    out: list[float | None] = []
    for completion, ref in zip(completions, answer):
        if not str(ref).lstrip("-").isdigit():
            out.append(None)
            continue
        try:
            diff = abs(int(completion.strip()) - int(ref))
        except ValueError:  # the model did not answer with an integer: a wrong answer, scored 0
            out.append(0.0)
            continue
        out.append(1.0 if diff == 0 else 0.5 if diff == 1 else 0.0)
    return out


def final_sum(prompts: list[str], completions: list[str], a: list[int], b: list[int], **columns) -> list[float]:
    """For `arith_trace` (written traces such as `7+5=12,c1,3+4+1=8,82`): 1.0 when the trace's last field is a + b,
    whatever the steps before it say; 0.0 otherwise. The dataset's `a` and `b` columns arrive as keyword arguments.

        rl train configs/cj_grpo_tiny.yaml reward=rewards/examples/my_rewards.py:final_sum
    """
    out = []
    for completion, x, y in zip(completions, a, b):
        last = completion.strip().split(",")[-1]
        out.append(1.0 if last.isdigit() and int(last) == x + y else 0.0)
    return out
