"""`arithmetic_chat`: the `arithmetic` problems as TRL conversational rows, for chat-template recipes.

A row is `{"prompt": [{"role": "user", "content": "What is 37+45? Answer with the number only."}], "answer": "82"}`:
the same problems, splits and seeds as `arithmetic` (so train and test stay disjoint), asked as a user message.
"""
from __future__ import annotations

from envs.datasets import DATASETS, arithmetic

QUESTION = "What is {expr}? Answer with the number only."


@DATASETS.register("arithmetic_chat")
def arithmetic_chat(split: str, size: int, seed: int) -> list[dict]:
    """`arithmetic(split, size, seed)` with each prompt `a+b=` asked as one user message."""
    return [{"prompt": [{"role": "user", "content": QUESTION.format(expr=r["prompt"].rstrip("="))}],
             "answer": r["answer"]} for r in arithmetic(split, size, seed)]
