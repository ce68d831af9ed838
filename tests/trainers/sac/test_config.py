"""SAC config validation."""
import pytest
from pydantic import ValidationError

from trainers.sac.config import SACConfig


def test_min_utd_cannot_exceed_max_utd():
    assert SACConfig(workers=2, min_utd=0.5, max_utd=1.0).min_utd == 0.5
    assert SACConfig(workers=2, min_utd=0).min_utd == 0  # APT's free-running workers
    with pytest.raises(ValidationError, match="min_utd"):
        SACConfig(workers=2, min_utd=2.0, max_utd=1.0)
