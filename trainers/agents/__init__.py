"""What the multi-turn agent trainers share (ArCHer, multi-turn GRPO, filtered BC): episodes as padded tensors,
log-probs over an episode's policy tokens, the held-out evaluation, the config, and the job loop."""
