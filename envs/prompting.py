"""How a dataset row's prompt becomes the token ids a policy generates from, and what reward functions receive.

`data.format` picks a renderer from `PROMPT_FORMATS`:
- `text`: the prompt string as it is, tokenized with the tokenizer's own special tokens (`tok(prompt)`), exactly
  what Orchard always did (the default recipe's `12+34=`);
- `chat`: the prompt through the tokenizer's chat template with the assistant turn opened
  (`apply_chat_template(messages, add_generation_prompt=True)`): a conversational row's `prompt` (TRL's format, a list
  of `{"role", "content"}` messages) as it is, a string prompt as one user message; `data.system_prompt`, if set,
  becomes a leading system message (unless the row already starts with one);
- `auto` (the default): `chat` when the tokenizer has a chat template, else `text`. A tokenizer without one (the
  zoo's `tiny-arith`, base models) therefore behaves exactly as `text`.

Rewards get what TRL gives them (`trl_completions`): a completion string for a string prompt, and
`[{"role": "assistant", "content": text}]` for a conversational prompt; `prompts` are the rows' prompts as the
dataset holds them (message lists stay lists; the system prompt is not added to them).
"""
from __future__ import annotations

import json
from typing import Any, Callable

from rl.errors import ConfigError
from rl.registry import Registry

PROMPT_FORMATS: Registry[Callable] = Registry("prompt format")
"""`data.format` name -> `render(tok, prompt, system_prompt) -> token ids`."""


def is_conversation(prompt: Any) -> bool:
    """A TRL conversational prompt: a list of message mappings."""
    return isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)


def check_messages(prompt: Any, where: str) -> list[dict]:
    """`prompt` as a list of `{"role": str, "content": str}` messages; a ConfigError naming `where` otherwise."""
    if not isinstance(prompt, list) or not prompt:
        raise ConfigError(f"{where}: a conversational prompt must be a non-empty list of {{role, content}} messages, "
                          f"got {type(prompt).__name__}")
    out = []
    for j, m in enumerate(prompt):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ConfigError(f"{where}: message {j} must be a mapping with string 'role' and 'content', got "
                              f"{str(m)[:80]!r}")
        out.append({k: v for k, v in m.items() if v is not None})  # a union schema's absent keys come back as None
    return out


@PROMPT_FORMATS.register("text")
def render_text(tok, prompt, system_prompt: str | None) -> list[int]:
    if is_conversation(prompt):
        raise ConfigError("data.format=text: the dataset's prompts are conversations (lists of {role, content} "
                          "messages), which need a chat template: use data.format=chat (or auto) with a tokenizer "
                          "that has one")
    if system_prompt is not None:
        raise ConfigError("data.system_prompt is set but prompts are rendered as raw text (data.format=text, or "
                          "auto with a tokenizer that has no chat template): a system prompt needs a chat template")
    return tok(prompt)["input_ids"]


@PROMPT_FORMATS.register("chat")
def render_chat(tok, prompt, system_prompt: str | None) -> list[int]:
    messages = list(prompt) if is_conversation(prompt) else [{"role": "user", "content": str(prompt)}]
    if system_prompt is not None and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]  # the template writes its own BOS, if any


def resolve_format(fmt: str, tok, model: str = "the model") -> str:
    """`auto` -> `chat` if `tok` has a chat template, else `text`; `chat` without a template is an error."""
    has_template = bool(getattr(tok, "chat_template", None))
    if fmt == "auto":
        return "chat" if has_template else "text"
    if fmt not in PROMPT_FORMATS:
        raise ConfigError(f"data.format: unknown prompt format '{fmt}'; known: auto, {', '.join(PROMPT_FORMATS)}")
    if fmt == "chat" and not has_template:
        raise ConfigError(f"data.format=chat but the tokenizer of {model} has no chat template (no chat_template in "
                          f"its tokenizer_config.json or chat_template.jinja); use data.format=text or a model "
                          f"directory whose tokenizer has one")
    return fmt


class Prompter:
    """A tokenizer bound to a resolved prompt format and system prompt: `ids(row)` is what the engine generates from."""

    def __init__(self, tok, fmt: str, system_prompt: str | None = None, model: str = "the model"):
        self.tok = tok
        self.format = resolve_format(fmt, tok, model)
        self.system_prompt = system_prompt
        self._render = PROMPT_FORMATS.get(self.format)
        self._cache: dict[str, list[int]] = {}  # rendered ids by prompt (a job renders each row more than once)

    @classmethod
    def for_data(cls, tok, data, model: str = "the model") -> "Prompter":
        """From a job's `data` section (its `format` and `system_prompt`)."""
        return cls(tok, data.format, data.system_prompt, model)

    def ids(self, row: dict) -> list[int]:
        prompt = row["prompt"]
        key = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
        if key not in self._cache:
            self._cache[key] = self._render(self.tok, prompt, self.system_prompt)
        return list(self._cache[key])

    def text(self, row: dict) -> str:
        """The rendered prompt as text (special tokens kept), e.g. to show what the model sees."""
        return self.tok.decode(self.ids(row), skip_special_tokens=False)


def trl_completions(rows: list[dict], texts: list[str]) -> list:
    """Completions as TRL hands them to reward functions: the text for a string prompt, a one-message assistant
    turn for a conversational prompt."""
    return [[{"role": "assistant", "content": t}] if is_conversation(r["prompt"]) else t for r, t in zip(rows, texts)]
