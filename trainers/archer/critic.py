"""ArCHer's utterance-level critic: an HF encoder (the zoo's `tiny-encoder`, or any local HF encoder directory:
ArCHer uses RoBERTa-base) whose first-token hidden state h(.) embeds a state and an utterance separately; twin
Q-MLPs on [h(s); h(a)] and twin V-MLPs on h(s) (H -> H -> H -> 1, ReLU), as in `archer/models/critic.py`.
The encoder is shared by the four heads and trained with them."""
from __future__ import annotations

import torch
from torch import nn


def mlp(d_in: int, h: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))


class DoubleCritic(nn.Module):
    def __init__(self, encoder_path: str, max_length: int = 512):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.encoder = AutoModel.from_pretrained(encoder_path)
        self.tok = AutoTokenizer.from_pretrained(encoder_path)
        self.tok.padding_side = "right"
        self.max_length = min(max_length, getattr(self.encoder.config, "max_position_embeddings", max_length))
        H = self.encoder.config.hidden_size
        self.q1, self.q2, self.v1, self.v2 = mlp(2 * H, H), mlp(2 * H, H), mlp(H, H), mlp(H, H)

    def embed(self, texts: list[str]) -> torch.Tensor:
        """[B, H] first-token hidden state of each text (truncated from the left: the end of a history matters)."""
        self.tok.truncation_side = "left"
        enc = self.tok(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        enc.pop("token_type_ids", None)
        return self.encoder(**enc).last_hidden_state[:, 0]  # [B, H]

    def forward(self, states: list[str], actions: list[str] | None = None):
        """(q1, q2, v1, v2), each [B]; q1/q2 are None without actions."""
        hs = self.embed(states)  # [B, H]
        v1, v2 = self.v1(hs).squeeze(-1), self.v2(hs).squeeze(-1)
        if actions is None:
            return None, None, v1, v2
        hsa = torch.cat([hs, self.embed(actions)], dim=-1)  # [B, 2H]
        return self.q1(hsa).squeeze(-1), self.q2(hsa).squeeze(-1), v1, v2
