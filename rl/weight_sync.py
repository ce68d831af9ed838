"""Moved to `rollout/weight_sync.py`. This re-export serves only `trainers/grpo/ranks.py`, which is being split
in parallel (issue 15); its import becomes `rollout.weight_sync` in that merge, and this file is then deleted."""
from rollout.weight_sync import BroadcastGroup, GroupSpec, SyncHub, buckets  # noqa: F401
