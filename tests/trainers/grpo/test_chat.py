"""Chat models end to end through `rl train`: a conversational parquet dataset with its own test split, a user's
TRL-style reward that indexes `completion[0]["content"]`, on the zoo's tiny chat model; the shipped chat recipe;
data and reward errors reported before any weights load."""
import json

import pytest
from datasets import Dataset

from envs.datasets import load_prompts
from rl.cli import main

pytestmark = pytest.mark.slow

SMALL = ["data.train_size=16", "data.eval_size=8", "rollout.prompts_per_step=4", "rollout.num_generations=4",
         "rollout.max_new_tokens=6", "eval.max_new_tokens=6", "log.progress=false", "log.tensorboard=false",
         "cluster.backend=local", "max_steps=2"]

TRL_REWARD = '''
import json
from pathlib import Path


def content_len(prompts, completions, answer, source, **kwargs):
    """TRL's conversational reward shape: completion[0]["content"] is the assistant's text."""
    with open(Path(__file__).with_suffix(".log"), "a") as f:
        f.write(json.dumps({"prompts": prompts, "completions": completions, "answer": answer, "source": source}) + "\\n")
    return [float(len(completion[0]["content"]) % 3) for completion in completions]
'''


def _parquet_splits(tmp_path) -> dict:
    files = {}
    for split in ("train", "test"):
        rows = [dict(r, source=f"gen-{split}") for r in load_prompts("arithmetic_chat", split, 16, 0)]
        Dataset.from_list(rows).to_parquet(tmp_path / f"{split}.parquet")
        files[split] = str(tmp_path / f"{split}.parquet")
    return files


def test_conversational_parquet_and_a_trl_reward_train_on_the_chat_model(tmp_path):
    files = _parquet_splits(tmp_path)
    reward = tmp_path / "my_reward.py"
    reward.write_text(TRL_REWARD)
    run_dir = tmp_path / "run"
    code = main(["train", "model.path=tiny-chat", f"data.name={json.dumps(files)}", "data.system_prompt=Be brief.",
                 f"reward={reward}:content_len", *SMALL, f"run_dir={run_dir}"])
    assert code == 0
    calls = [json.loads(x) for x in reward.with_suffix(".log").read_text().splitlines()]
    assert len(calls) == 2  # one call per training step, 4 prompts x 4 generations each
    train_prompts = {json.dumps(r["prompt"]) for r in load_prompts(files, "train", 16, 0)}
    for call in calls:
        assert len(call["completions"]) == 16 and call["source"] == ["gen-train"] * 16
        for prompt, completion in zip(call["prompts"], call["completions"]):
            assert json.dumps(prompt) in train_prompts  # the dataset's messages, as TRL passes them
            assert isinstance(completion, list) and len(completion) == 1
            assert completion[0]["role"] == "assistant" and isinstance(completion[0]["content"], str)
    config = (run_dir / "config.yaml").read_text()
    assert "format: auto" in config and "system_prompt: Be brief." in config
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval/size"] == 8 and 0.0 <= summary["eval/accuracy_after"] <= 1.0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and all("reward/content_len/mean" in r for r in rows[1:])
    # rl eval of the run: the same chat path on the test split
    assert main(["eval", str(run_dir)]) == 0
    assert json.loads((run_dir / "eval.json").read_text())["eval/accuracy"] == summary["eval/accuracy_after"]


def test_the_shipped_chat_recipe_runs(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", "configs/grpo_chat_example.yaml", *SMALL, "trainer.micro_batch_size=8",
                 f"run_dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and "tiny-chat" in summary["model"]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("reward/math_verify/mean" in r for r in rows[1:])


def _unloadable_model(tmp_path):
    """tiny-chat's directory with its weights file replaced by garbage: any attempt to load the weights fails."""
    import shutil

    from rl.zoo import resolve_model_path

    d = tmp_path / "broken-model"
    shutil.copytree(resolve_model_path("tiny-chat"), d)
    (d / "model.safetensors").write_bytes(b"garbage")
    return d


def test_data_and_reward_errors_come_before_the_weights_load(tmp_path, capsys):
    model = _unloadable_model(tmp_path)
    base = ["train", f"model.path={model}", *SMALL]
    files = _parquet_splits(tmp_path)
    # the model really cannot load: with valid data and rewards the job fails on the weights
    with pytest.raises(Exception, match=r"(?i)safetensors|header|deserializ"):
        main([*base, f"data.name={json.dumps(files)}", f"run_dir={tmp_path / 'r0'}"])
    cases = [
        ([f"data.name={tmp_path / 'none.parquet'}"], "data.name: file not found"),
        ([f"data.name={json.dumps(files)}", "data.answer_key=solution"], "data.answer_key: no column 'solution'"),
        ([f"data.name={json.dumps(files)}", "data.test_split=validation"], "data.test_split: no split 'validation'"),
        ([f"data.name={json.dumps(files)}", "eval.reward=code_tests"], "eval.reward: reward 'code_tests' needs 'tests'"),
        (["data.name=arithmetic_chat", "data.format=text"], "data.format=text: the dataset's prompts are conversations"),
        ([f"data.name={json.dumps(files)}", "rollout.max_new_tokens=500"],
         "plus rollout.max_new_tokens=500 exceeds the model's max_position_embeddings=512"),
    ]
    for i, (args, message) in enumerate(cases):
        assert main([*base, *args, f"run_dir={tmp_path / f'r{i + 1}'}"]) == 2, message
        err = capsys.readouterr().err
        assert message in err, (message, err[-500:])
