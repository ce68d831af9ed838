"""Multi-turn text environments: the API and registry (`base.py`), the checked batch the runner steps
(`batch.py`), built-in games (`twenty_questions.py`: twenty_questions, guess_my_city) and the TextArena adapter
(`textarena.py`)."""
from envs.text.base import TEXT_ENVS, TextEnv, env_factory
from envs.text.batch import TextEnvBatch, TextEnvError

__all__ = ["TEXT_ENVS", "TextEnv", "TextEnvBatch", "TextEnvError", "env_factory"]
