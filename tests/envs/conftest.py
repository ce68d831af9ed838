"""Fixtures shared by the env tests."""
import pytest


@pytest.fixture(scope="session")
def long_context_policy(tmp_path_factory):
    """A random tiny Llama with 2048 positions (GuessTheNumber's first observation alone is 516 characters; as a
    TextArena opponent it plays garbage)."""
    from rl.zoo import ArchSpec, build_tokenizer, init_random_model

    out = tmp_path_factory.mktemp("long-context-policy")
    tok = build_tokenizer()
    init_random_model(ArchSpec(hidden=64, layers=1, heads=1, intermediate=128, max_positions=2048), tok, 0) \
        .save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
