"""The zoo model `tiny-chat`: a random tiny Llama (0.34M parameters) whose tokenizer has a ChatML chat template, the
stand-in for an instruct model in tests and CI (`configs/grpo_chat_example.yaml`). Random init, not trained: it exercises the chat
path (template, end-of-turn token, conversational rewards), not learning.

Its tokenizer is the zoo's character-level one plus the special tokens `<|im_start|>` and `<|im_end|>` (the end of
an assistant turn, and the model's EOS, as in Qwen2-Instruct). Llama rather than Qwen2: transformers loads a qwen2
directory's tokenizer as `Qwen2Tokenizer`, whose byte-level pre-tokenizer would replace the character-level one. Registered into `rl.zoo.MODELS` on import
(`rl.zoo.MODEL_PROVIDERS` names this module).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from rl.zoo import BOS, CHARS, MODELS, PAD, UNK, ArchSpec, ZooModel, init_random_model

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, the format of Qwen2-Instruct's template (without its default system message)."""

TINY_CHAT_ARCH = ArchSpec(hidden=128, layers=2, heads=2, intermediate=256, max_positions=512)


def build_chat_tokenizer():
    """Character-level fast tokenizer with ChatML special tokens and template; eos = `<|im_end|>`."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([PAD, BOS, IM_END, UNK, IM_START, *CHARS])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.add_special_tokens([IM_START, IM_END])  # matched whole, before the character split
    tok.decoder = decoders.Fuse()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=IM_END, pad_token=PAD,
                                  unk_token=UNK, padding_side="left", clean_up_tokenization_spaces=False)
    out.chat_template = CHATML_TEMPLATE
    return out


def build_tiny_chat(out_dir: Path, seed: int) -> dict:
    tok = build_chat_tokenizer()
    init_random_model(TINY_CHAT_ARCH, tok, seed).save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return {}


MODELS.register("tiny-chat")(ZooModel(
    build=build_tiny_chat,
    recipe={"kind": "random-chat", "arch": asdict(TINY_CHAT_ARCH), "architecture": "LlamaForCausalLM",
            "template": CHATML_TEMPLATE, "version": 1}))
