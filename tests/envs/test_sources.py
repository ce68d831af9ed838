"""Dataset files through the `datasets` package: every format, save_to_disk directories, split mappings, held-out
fractions, conversational prompts, and the named errors."""
import hashlib
import json

import pytest
from datasets import Dataset, DatasetDict

from envs.datasets import load_prompts
from envs.sources import FILE_FORMATS, holdout
from rl.errors import ConfigError

ROWS = [{"q": f"{i}+1=", "a": i + 1, "level": i % 3} for i in range(10)]
CHAT = [{"prompt": [{"role": "user", "content": f"What is {i}+1?"}], "answer": str(i + 1), "source": "gen"}
        for i in range(12)]
COVERED = {".jsonl", ".json", ".csv", ".parquet"}


def _write(path, rows):
    ds = Dataset.from_list(rows)
    {".jsonl": lambda: ds.to_json(path, lines=True), ".json": lambda: path.write_text(json.dumps(rows)),
     ".csv": lambda: ds.to_csv(path, index=False), ".parquet": lambda: ds.to_parquet(path)}[path.suffix]()
    return path


def test_every_file_format_is_tested():
    assert set(FILE_FORMATS.names()) == COVERED


@pytest.mark.parametrize("suffix", sorted(COVERED))
def test_every_format_gives_the_same_rows_with_every_column(tmp_path, suffix):
    p = _write(tmp_path / f"qa{suffix}", ROWS)
    (tmp_path / f"qa.test{suffix}").unlink(missing_ok=True)
    _write(tmp_path / f"qa.test{suffix}", ROWS[:2])
    rows = load_prompts(str(p), "train", 4, 0, prompt_key="q", answer_key="a")
    assert rows == [{"prompt": f"{i}+1=", "answer": str(i + 1), "level": i % 3} for i in range(4)]
    assert load_prompts(str(p), "test", 10, 0, "q", "a") == [{"prompt": f"{i}+1=", "answer": str(i + 1),
                                                              "level": i % 3} for i in range(2)]


def test_conversational_parquet_with_its_own_test_split(tmp_path):
    train, test = _write(tmp_path / "train.parquet", CHAT[:10]), _write(tmp_path / "test.parquet", CHAT[10:])
    spec = {"train": str(train), "test": str(test)}
    assert load_prompts(spec, "train", 100, 0) == CHAT[:10]
    assert load_prompts(spec, "test", 100, 0) == CHAT[10:]
    assert isinstance(load_prompts(spec, "test", 1, 0)[0]["prompt"], list)


def test_save_to_disk_directories(tmp_path):
    DatasetDict({"train": Dataset.from_list(CHAT[:10]), "validation": Dataset.from_list(CHAT[10:])}).save_to_disk(
        tmp_path / "dd")
    assert load_prompts(str(tmp_path / "dd"), "train", 100, 0) == CHAT[:10]
    assert load_prompts(str(tmp_path / "dd"), "test", 100, 0, test_split="validation") == CHAT[10:]
    with pytest.raises(ConfigError, match=r"data.test_split: no split 'test' in .*dd \(splits: train, validation\)"):
        load_prompts(str(tmp_path / "dd"), "test", 100, 0)
    Dataset.from_list(CHAT).save_to_disk(tmp_path / "one")
    assert load_prompts(str(tmp_path / "one"), "train", 100, 0) == CHAT


def test_a_held_out_fraction_is_disjoint_fixed_and_in_file_order(tmp_path):
    p = _write(tmp_path / "all.jsonl", CHAT)
    train = load_prompts(str(p), "train", 100, seed=5, test_split=0.25)
    test = load_prompts(str(p), "test", 100, seed=6, test_split=0.25)  # the run seed does not move the split
    assert len(test) == 3 and len(train) == 9
    key = lambda r: r["answer"]
    assert not {key(r) for r in train} & {key(r) for r in test}
    assert sorted(map(key, train + test), key=int) == [key(r) for r in CHAT]
    assert train == [r for r in CHAT if key(r) not in {key(t) for t in test}]  # file order kept
    assert holdout(12, 0.25) == holdout(12, 0.25)


def test_a_fraction_is_refused_for_a_generator_with_its_own_split():
    with pytest.raises(ConfigError, match=r"data.test_split=0.1: .*'arithmetic' has its own test split"):
        load_prompts("arithmetic", "test", 10, 0, test_split=0.1)


def test_arithmetic_rows_are_unchanged():
    """Pinned to the rows the hand-written loader produced before the datasets package read files."""
    digest = lambda rows: hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    assert digest(load_prompts("arithmetic", "train", 6400, 0)) == "312978273456e4f1"
    assert digest(load_prompts("arithmetic", "test", 1600, 0)) == "3792eb708c31a32b"
    assert digest(load_prompts("arithmetic", "train", 500, 7)) == "7d359bfd9589c21b"


def test_arithmetic_chat_asks_the_arithmetic_problems():
    plain, chat = load_prompts("arithmetic", "test", 20, 0), load_prompts("arithmetic_chat", "test", 20, 0)
    assert [r["answer"] for r in chat] == [r["answer"] for r in plain]
    assert chat[0]["prompt"] == [{"role": "user", "content": f"What is {plain[0]['prompt'][:-1]}? Answer with the "
                                                              f"number only."}]


def test_named_errors(tmp_path):
    p = _write(tmp_path / "qa.parquet", ROWS)
    with pytest.raises(ConfigError, match=r"data.prompt_key: no column 'prompt' in .*qa.parquet \(split 'train'; "
                                          r"columns: q, a, level\)"):
        load_prompts(str(p), "train", 10, 0)
    with pytest.raises(ConfigError, match=r"data.answer_key: no column 'answr' in .*qa.parquet"):
        load_prompts(str(p), "train", 10, 0, prompt_key="q", answer_key="answr")
    with pytest.raises(ConfigError, match=r"data.test_split: no split 'test' in .*qa.parquet \(splits: train\).*fraction"):
        load_prompts(str(p), "test", 10, 0, "q", "a")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match=r"data.name: .*empty.jsonl: the file is empty"):
        load_prompts(str(tmp_path / "empty.jsonl"), "train", 10, 0)
    (tmp_path / "qa.txt").write_text("hello\n")
    with pytest.raises(ConfigError, match=r"data.name: .*qa.txt: unreadable dataset format '.txt'"):
        load_prompts(str(tmp_path / "qa.txt"), "train", 10, 0)
    (tmp_path / "broken.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(ConfigError, match=r"data.name: cannot read .*broken.parquet as parquet"):
        load_prompts(str(tmp_path / "broken.parquet"), "train", 10, 0)
    bad = _write(tmp_path / "msgs.jsonl", [{"prompt": [{"role": "user", "text": "hi"}], "answer": "1"}])
    with pytest.raises(ConfigError, match=r"msgs.jsonl:1: column 'prompt': message 0 must be a mapping with string "
                                          r"'role' and 'content'"):
        load_prompts(str(bad), "train", 10, 0)
    with pytest.raises(ConfigError, match=r"data.name: the split files must share one format"):
        load_prompts({"train": str(p), "test": str(bad)}, "train", 10, 0)
