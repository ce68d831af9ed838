"""An example user reward file (TRL signature). Use it with:

    rl train configs/grpo_tiny.yaml reward=rewards/examples/my_rewards.py:close_enough
"""


def close_enough(prompts: list[str], completions: list[str], answer: list[str], **columns) -> list[float | None]:
    """1.0 for the exact answer, 0.5 when off by one, 0.0 otherwise; None (not applicable) if the reference
    is not an integer."""
    out = []
    for c, a in zip(completions, answer):
        if not a.lstrip("-").isdigit():
            out.append(None)
            continue
        try:
            diff = abs(int(c.strip()) - int(a))
        except ValueError:
            out.append(0.0)
            continue
        out.append(1.0 if diff == 0 else 0.5 if diff == 1 else 0.0)
    return out
