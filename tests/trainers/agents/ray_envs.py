"""User text environments for the Ray end-to-end agent test (loaded from this file by the rollout workers)."""
import os
import signal


class Parity:
    """Two turns; +1 for each utterance of even length. A random policy's episodes of one seed then differ in
    return, so GRPO's advantages are non-zero and the policy (and the weights the workers get) really change."""

    def __init__(self, split: str = "train", marker: str | None = None):
        self.split, self.marker = split, marker

    def reset(self, seed):
        self.turn = 0
        return f"say something ({seed % 7})\n"

    def step(self, utterance):
        self.turn += 1
        return "again\n", float(len(utterance) % 2 == 0), self.turn >= 2, {}


class DiesOnce(Parity):
    """Parity, but the first training episode step anywhere SIGKILLs its own process (a rollout worker): once per
    `marker` file, created atomically, so exactly one worker dies. Evaluation (split test) never dies."""

    def step(self, utterance):
        if self.split == "train" and self.marker:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().step(utterance)
