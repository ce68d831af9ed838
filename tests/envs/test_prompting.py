"""Prompt formats: `auto` is text on a tokenizer without a chat template (the default recipe's tiny-arith) and
chat on one with a template (tiny-chat); rewards get TRL's completion format."""
import pytest

from envs.prompting import PROMPT_FORMATS, Prompter, resolve_format, trl_completions
from rl.errors import ConfigError
from rl.zoo import build_tokenizer
from rl.zoo_chat import build_chat_tokenizer

COVERED = {"text", "chat"}
CONVERSATION = [{"role": "user", "content": "What is 37+45? Answer with the number only."}]


def test_every_registered_format_is_tested():
    assert set(PROMPT_FORMATS.names()) == COVERED


def test_auto_without_a_chat_template_is_the_old_raw_text_path():
    tok = build_tokenizer()  # what tiny-arith and the random zoo models save
    assert tok.chat_template is None
    p = Prompter(tok, "auto")
    assert p.format == "text"
    for prompt in ("37+45=", "12+34=", " a b\n"):
        assert p.ids({"prompt": prompt}) == tok(prompt)["input_ids"]


def test_tiny_arith_saves_no_chat_template(tmp_path):
    """The cached default policy's tokenizer directory carries no template either (auto stays text for it)."""
    from transformers import AutoTokenizer

    build_tokenizer().save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template is None
    assert not (tmp_path / "chat_template.jinja").exists()


def test_chat_renders_the_template_with_an_open_assistant_turn():
    tok = build_chat_tokenizer()
    p = Prompter(tok, "auto")
    assert p.format == "chat"
    expected = "<|im_start|>user\nWhat is 37+45? Answer with the number only.<|im_end|>\n<|im_start|>assistant\n"
    assert p.text({"prompt": CONVERSATION}) == expected
    assert p.ids({"prompt": CONVERSATION}) == tok(expected, add_special_tokens=False)["input_ids"]
    assert p.ids({"prompt": CONVERSATION}) == tok(tok.apply_chat_template(CONVERSATION, tokenize=False,
                                                                          add_generation_prompt=True),
                                                  add_special_tokens=False)["input_ids"]
    assert p.text({"prompt": "hi"}) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"  # a string: one user turn


def test_system_prompt_leads_unless_the_row_has_its_own():
    tok = build_chat_tokenizer()
    p = Prompter(tok, "chat", system_prompt="Be brief.")
    assert p.text({"prompt": "hi"}).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi")
    own = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "hi"}]
    assert p.text({"prompt": own}).startswith("<|im_start|>system\nMine.<|im_end|>\n<|im_start|>user\nhi")
    assert p.text({"prompt": own}).count("system") == 1


def test_format_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"data.format=chat but the tokenizer of /m has no chat template"):
        resolve_format("chat", build_tokenizer(), "/m")
    text = Prompter(build_tokenizer(), "text")
    with pytest.raises(ConfigError, match=r"data.format=text: the dataset's prompts are conversations"):
        text.ids({"prompt": CONVERSATION})
    with pytest.raises(ConfigError, match=r"data.system_prompt is set but prompts are rendered as raw text"):
        Prompter(build_tokenizer(), "auto", system_prompt="x").ids({"prompt": "1+1="})


def test_trl_completions_follow_the_prompt_kind():
    rows = [{"prompt": "1+1="}, {"prompt": CONVERSATION}]
    assert trl_completions(rows, ["2", "82"]) == ["2", [{"role": "assistant", "content": "82"}]]


def test_builtin_rewards_read_conversational_completions():
    from rewards.builtin import exact_match, format_reward, length_penalty, math_verify, numeric_match

    msgs = [[{"role": "assistant", "content": "82"}], [{"role": "assistant", "content": "81"}]]
    for fn in (exact_match, numeric_match, math_verify):
        assert fn([CONVERSATION] * 2, msgs, answer=["82", "82"]) == [1.0, 0.0], fn.__name__
    assert format_reward([CONVERSATION] * 2, msgs, pattern=r"82") == [1.0, 0.0]
    assert length_penalty([CONVERSATION] * 2, msgs, target=1, scale=1.0) == [-1.0, -1.0]
