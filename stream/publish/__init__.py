"""Publishing to Redis (docs/redis.md): the Publisher (publisher.py), the wire format
(encoding.py), the event outbox (outbox.py) and the Lua scripts (scripts.py)."""
