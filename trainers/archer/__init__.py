"""ArCHer (Zhou et al. 2024): an utterance-level off-policy critic and a token-level policy gradient."""
