"""Scaling out: sharded outputs (`shards`), one worker per device (`devices`) and Ray (`ray`)."""
