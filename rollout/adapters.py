"""LoRA adapter weight sync (`rollout.lora_sync: adapter`): the trainer ships only its peft adapter, and every rollout
engine serves the base weights it loaded at start plus that adapter (vLLM: `enable_lora` + `LoRARequest`; HF: peft),
instead of receiving the merged full weights after every step.

`AdapterWeights` is what travels (through the Ray object store, or in process): the adapter's `adapter_config.json`
as a dict and its tensors, exactly as peft's `save_pretrained` writes them. A worker writes it into a directory of its
own (`AdapterDir`) and calls `engine.load_lora(dir, version)`; the weight-sync probe check then scores the probe with
the adapter active, as with merged weights. The base weights never change on either side (LoRA trains only the
adapter), so base + adapter is the trainer's policy.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


@dataclass
class AdapterWeights:
    config: dict
    """The adapter's adapter_config.json."""
    tensors: dict[str, torch.Tensor]
    """peft's saved names (`base_model.model....lora_A.weight`) -> tensors."""

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @classmethod
    def from_peft(cls, model) -> "AdapterWeights":
        """The active adapter of a peft model, as `save_pretrained` writes it (tensors on CPU)."""
        with tempfile.TemporaryDirectory(prefix="orchard-adapter-") as d:
            model.save_pretrained(d, safe_serialization=True)
            return cls.read(Path(d))

    @classmethod
    def read(cls, d: Path) -> "AdapterWeights":
        from safetensors.torch import load_file

        return cls(json.loads((d / CONFIG_FILE).read_text()), load_file(d / WEIGHTS_FILE))

    def write(self, d: Path) -> Path:
        from safetensors.torch import save_file

        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, d / WEIGHTS_FILE)
        (d / CONFIG_FILE).write_text(json.dumps(self.config))
        return d


class AdapterDir:
    """A worker's adapter directories, one per loaded version; the newest `keep` stay (an engine may read the files
    lazily, at its next request), the rest are deleted, and all of them on `close`."""

    def __init__(self, keep: int = 2):
        self.root = Path(tempfile.mkdtemp(prefix="orchard-lora-"))
        self.keep = keep
        self._dirs: list[Path] = []

    def load(self, engine, adapter: AdapterWeights, version: int) -> None:
        d = adapter.write(self.root / f"v{version}-{len(self._dirs)}")
        engine.load_lora(str(d), version)
        self._dirs.append(d)
        for old in self._dirs[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        self._dirs = self._dirs[-self.keep:]

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
