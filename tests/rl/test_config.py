"""Config: every shipped recipe loads; unknown keys, wrong types and bounds fail with the dotted path."""
from pathlib import Path

import pytest

from rl.config import JOBS, describe, dump_config, get_job, load_config, parse_override
from rl.errors import ConfigError

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.algo in JOBS


def test_configs_exist():
    assert any(p.name == "grpo_tiny.yaml" for p in CONFIGS)


def test_shipped_recipes_resolve_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    for name in ("configs/grpo_tiny.yaml", "grpo_tiny.yaml", "grpo_tiny"):
        assert load_config(name).max_steps == 80, name
    (tmp_path / "grpo_tiny.yaml").write_text("algo: grpo\nmax_steps: 7\n")  # a file of the user's wins
    assert load_config("grpo_tiny.yaml").max_steps == 7
    with pytest.raises(ConfigError, match=r"config file not found: grpo_tinny\.yaml \(did you mean 'grpo_tiny\.yaml'\?\); "
                                          r"shipped recipes .*dapo_tiny, dr_grpo_tiny, .*grpo_tiny, "):
        load_config("grpo_tinny.yaml")
    with pytest.raises(ConfigError, match="config file not found: elsewhere/grpo_tiny.yaml"):
        load_config("elsewhere/grpo_tiny.yaml")  # an explicit other directory is not silently replaced


def test_dotted_overrides_are_applied_and_typed():
    cfg = load_config("configs/grpo_tiny.yaml", ["max_steps=50", "trainer.lr=3e-6", "rollout.engine=vllm", "seed=1",
                                                 "run_dir=runs/x"])
    assert cfg.max_steps == 50 and cfg.trainer.lr == pytest.approx(3e-6) and cfg.rollout.engine == "vllm"
    assert cfg.seed == 1 and cfg.run_dir == "runs/x"


def test_unknown_key_names_dotted_path_and_suggests():
    with pytest.raises(ConfigError, match=r"trainer\.lrr: unknown key \(did you mean 'lr'\?\)"):
        load_config("configs/grpo_tiny.yaml", ["trainer.lrr=1"])


def test_unknown_key_in_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("algo: grpo\nrollout:\n  num_generation: 4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*\n.*rollout\.num_generation: unknown key \(did you mean 'num_generations'\?\)"):
        load_config(p)


def test_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError, match=r"trainer\.lr: .*valid number.*got 'abc'"):
        load_config(None, ["trainer.lr=abc"])


def test_bounds_are_enforced():
    with pytest.raises(ConfigError, match=r"rollout\.num_generations: .*greater than or equal to 1"):
        load_config(None, ["rollout.num_generations=0"])


def test_literal_choices():
    with pytest.raises(ConfigError, match=r"rollout\.engine: .*'hf', 'vllm' or 'btm_ensemble'"):
        load_config(None, ["rollout.engine=vlm"])


def test_unknown_algo_suggests():
    with pytest.raises(ConfigError, match=r"unknown job 'grp'.*did you mean 'grpo'"):
        load_config(None, ["algo=grp"])


def test_override_into_value_is_an_error():
    with pytest.raises(ConfigError, match=r"'max_steps' is a value, not a section"):
        load_config("configs/grpo_tiny.yaml", ["max_steps.x=1"])


def test_override_syntax():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("x=path/to/f.py:fn") == ("x", "path/to/f.py:fn")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")


def test_reward_shorthands():
    assert [r.fn for r in load_config(None, ["reward=my.py:fn"]).reward] == ["my.py:fn"]
    cfg = load_config(None, ["reward=[exact_match, {fn: format, weight: 0.5, kwargs: {pattern: '\\d+'}}]"])
    assert [(r.fn, r.weight) for r in cfg.reward] == [("exact_match", 1.0), ("format", 0.5)]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_every_field_is_documented():
    for name in JOBS:
        try:
            cls = get_job(name).config_cls
        except ImportError:
            continue
        undocumented = [line for line in describe(cls) if line.endswith("# ")]
        assert not undocumented, f"{name}: fields without a docstring: {undocumented}"


def test_trainer_ranks_need_ray_and_fsdp2_refuses_lora():
    with pytest.raises(ConfigError, match=r"cluster: .*cluster\.trainer_ranks=2 needs cluster\.backend=ray"):
        load_config("configs/grpo_tiny.yaml", ["cluster.backend=local", "cluster.trainer_ranks=2"])
    with pytest.raises(ConfigError, match=r"cluster\.trainer_strategy=fsdp2 with model\.lora\.enabled=true"):
        load_config("configs/grpo_tiny.yaml", ["cluster.trainer_ranks=2", "cluster.trainer_strategy=fsdp2",
                                               "model.lora.enabled=true"])
    with pytest.raises(ConfigError, match=r"cluster\.trainer_strategy: .*'ddp' or 'fsdp2'"):
        load_config("configs/grpo_tiny.yaml", ["cluster.trainer_strategy=zero3"])
    cfg = load_config("configs/grpo_tiny.yaml", ["cluster.trainer_ranks=2", "cluster.trainer_strategy=fsdp2"])
    assert cfg.cluster.trainer_ranks == 2 and cfg.cluster.trainer_strategy == "fsdp2"


def test_checks_across_keys_print_their_own_message():
    """A model validator's error names its keys itself: no pydantic prefix, no '(got a mapping)', and at the top
    level no empty path."""
    with pytest.raises(ConfigError) as e:
        load_config("configs/grpo_tiny.yaml", ["cluster.backend=local", "cluster.weight_sync=broadcast"])
    assert "\n  cluster: cluster.weight_sync=broadcast needs cluster.backend=ray" in str(e.value)
    assert "mapping" not in str(e.value) and "Value error" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config("configs/sac_pendulum.yaml", ["min_utd=5"])
    assert str(e.value).endswith("\n  min_utd=5.0 must not exceed max_utd=1.0"), str(e.value)
    with pytest.raises(ConfigError, match=r"cluster\.weight_sync: .*'auto', 'object_store' or 'broadcast' \(got 'nccl'\)"):
        load_config("configs/grpo_tiny.yaml", ["cluster.weight_sync=nccl"])


def test_offpolicy_knobs_are_settable_and_checked_with_their_dotted_keys():
    t = load_config("configs/grpo_tiny.yaml", ["trainer.offpolicy=mask", "trainer.mask_low=0.2", "trainer.mask_high=4",
                                               "trainer.behav_weight_cap=3", "trainer.is_cap=1.5"]).trainer
    assert (t.offpolicy, t.mask_low, t.mask_high, t.behav_weight_cap, t.is_cap) == ("mask", 0.2, 4.0, 3.0, 1.5)
    with pytest.raises(ConfigError, match=r"trainer\.mask_low: .*less than or equal to 1 \(got 1.5\)"):
        load_config(None, ["trainer.mask_low=1.5"])
    with pytest.raises(ConfigError, match=r"trainer\.mask_high: .*greater than or equal to 1 \(got 0.5\)"):
        load_config(None, ["trainer.mask_high=0.5"])
    with pytest.raises(ConfigError, match=r"trainer\.behav_weight_cap: .*greater than 0"):
        load_config(None, ["trainer.behav_weight_cap=0"])
    with pytest.raises(ConfigError, match=r"trainer\.offpolicy: unknown off-policy correction 'tis_tokn' "
                                          r"\(did you mean 'tis_token'\?\); known: decoupled, mask, none"):
        load_config(None, ["trainer.offpolicy=tis_tokn"])
    with pytest.raises(ConfigError, match=r"trainer\.advantage: unknown advantage estimator 'dr_grp' \(did you mean "
                                          r"'dr_grpo'\?\)"):
        load_config(None, ["trainer.advantage=dr_grp"])
    with pytest.raises(ConfigError, match=r"trainer\.dual_clip_c: .*greater than 1"):
        load_config(None, ["trainer.dual_clip_c=0.5"])


@pytest.mark.parametrize("overrides,resolved", [
    ([], "none"), (["max_staleness=2"], "decoupled"), (["trainer.offpolicy=null"], "none"),
    (["max_staleness=2", "trainer.offpolicy=null"], "decoupled"),
    (["max_staleness=2", "trainer.offpolicy=tis_seq"], "tis_seq"),
])
def test_offpolicy_default_is_resolved_when_the_config_loads(tmp_path, overrides, resolved):
    cfg = load_config("configs/grpo_tiny.yaml", overrides)
    assert cfg.trainer.offpolicy == resolved
    dumped = dump_config(cfg)  # what config.yaml records, and what a resume loads again
    assert f"  offpolicy: {resolved}\n" in dumped
    (tmp_path / "config.yaml").write_text(dumped)
    assert load_config(tmp_path / "config.yaml") == cfg


def test_old_logprobs_source_is_decided_by_the_config_once():
    src = lambda *o: load_config("configs/grpo_tiny.yaml", list(o)).old_logprobs
    assert src() == "behav"
    assert src("max_staleness=1") == src("trainer.recompute_old_logprobs=true") == "current"
    assert src("trainer.ppo_epochs=2") == src("trainer.ppo_epochs=2", "max_staleness=1") == "recompute"


def test_unknown_estimator_suggests():
    assert load_config("configs/grpo_tiny.yaml").model.estimator == "causal"
    with pytest.raises(ConfigError, match=r"model\.estimator: unknown log-prob estimator 'causl' \(did you mean "
                                          r"'causal'\?\); known: causal"):
        load_config("configs/grpo_tiny.yaml", ["model.estimator=causl"])


def test_reward_entries_are_the_reward_specs_rewards_runs():
    from rewards import RewardSpec

    cfg = load_config(None, ["reward=[{fn: format, weight: 0.5, kwargs: {pattern: x}}]"])
    assert cfg.reward == [RewardSpec(fn="format", weight=0.5, kwargs={"pattern": "x"})]
    with pytest.raises(ConfigError, match=r"reward\.0\.weight: .*finite number"):
        load_config(None, ["reward=[{fn: exact_match, weight: .nan}]"])
    with pytest.raises(ConfigError, match=r"reward\.0\.wieght: unknown key"):
        load_config(None, ["reward=[{fn: exact_match, wieght: 2}]"])


def test_rollout_max_batch_of_older_runs_still_loads():
    """Runs recorded before the engines had option sections wrote `rollout.max_batch`; it now sets both engines'."""
    from trainers.grpo.config import GRPOConfig

    cfg = GRPOConfig.model_validate({"rollout": {"max_batch": 32, "vllm": {"max_batch": 8}}})
    assert cfg.rollout.hf.max_batch == 32
    assert cfg.rollout.vllm.max_batch == 8  # an explicit new-style value wins
