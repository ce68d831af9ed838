"""The tiny-agent warm start renders episodes as the multi_turn runner does, with the loss on utterances only."""
from rl.zoo import build_tokenizer
from rollout.runners.multi_turn import MultiTurnRunner
from trainers.sft.tiny_agent import encode_episodes, expert_episodes, knowledge_episodes


def test_episodes_rendered_like_the_runner_loss_on_utterances(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    runner = MultiTurnRunner(env="twenty_questions", tokenizer_path=str(tmp_path))
    dog = next(e for e in knowledge_episodes("twenty_questions") if e[-1][0] == "Is it dog?")
    ids, attn, mask = encode_episodes(runner, [dog])
    n = int(attn[0].sum())
    expected = (runner.first_ids("Guess the object.\n") + tok("Is it animal?")["input_ids"] + [tok.eos_token_id]
                + runner.observation_ids("Yes.\n", True))
    assert ids[0, :len(expected)].tolist() == expected
    assert tok.decode(ids[0, :n][mask[0, :n].bool()]).count("</s>") == 11  # 10 questions + the guess, each + EOS
    assert tok.decode(ids[0, :n]).endswith("Is it soft?</s>Yes.\nIs it dog?</s>")
    # the noisy expert only ever hides train-split objects
    import numpy as np
    eps = expert_episodes("twenty_questions", "train", range(30), 0.6, 0.1, np.random.default_rng(0))
    from envs.text.twenty_questions import TwentyQuestions
    train = set(TwentyQuestions("train").names)
    assert all(e[-1][1] == "Correct!\n" or len(e) == 21 for e in eps)
    assert {e[-1][0].removeprefix("Is it ").rstrip("?") for e in eps if e[-1][1] == "Correct!\n"} <= train
