"""The Redis contract's names (docs/redis.md) and how every component connects.

One place spells each key and channel, so the publisher, the threshold store, ``dfstream
watch`` and the API can never disagree about them. All names start with the configured prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from engines.errors import UserError
from stream.sources.urls import redact

SCHEMA_VERSION = 1
"""``v`` of every published message; raised only for changes a subscriber must know about."""

URL_SCHEMES = ("redis", "rediss", "unix")


SERVICE_COMMANDS = (
    "ping", "get", "set", "del", "incr", "incrby", "scan",
    "hset", "hsetnx", "hget", "hgetall", "hdel", "hexists", "hincrby", "hkeys",
    "xadd", "xrange", "xrevrange", "xread",
    "publish", "subscribe", "psubscribe", "unsubscribe", "punsubscribe",
    "evalsha", "script|load",
)
"""Every command the service, `dfstream watch` and the API send (their Lua scripts' too)."""


def acl_rules(prefix: str = "dfstream:") -> list[str]:
    """``ACL SETUSER <user> >PASSWORD`` rules for a least-privilege service user: its own
    keys and channels only, and only the commands it sends (docs/redis.md, "A user of its own")."""
    return ["on", "resetkeys", f"~{prefix}*", "resetchannels", f"&{prefix}*", "-@all",
            *(f"+{command}" for command in SERVICE_COMMANDS)]


class RedisUrlError(UserError, ValueError):
    """A Redis URL that cannot be used."""


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "dfstream:"

    def scores(self, stream: str) -> str:
        """Channel: one message per analysed frame of ``stream``."""
        return f"{self.prefix}scores:{stream}"

    def state(self, stream: str) -> str:
        """Hash: the stream's latest scores and status."""
        return f"{self.prefix}state:{stream}"

    @property
    def state_pattern(self) -> str:
        return f"{self.prefix}state:*"

    @property
    def events(self) -> str:
        """Stream and channel (same name): lifecycle and alert events."""
        return f"{self.prefix}events"

    def evidence(self, event_id: str) -> str:
        """String with a TTL: the JPEG of the face crop at an alert's peak."""
        return f"{self.prefix}evidence:{event_id}"

    def heatmap(self, event_id: str) -> str:
        """String with the evidence's TTL: that crop with the detector's saliency overlaid."""
        return f"{self.prefix}heatmap:{event_id}"

    @property
    def config(self) -> str:
        """Hash: thresholds (default and per stream) and their ``version`` counter."""
        return f"{self.prefix}config"

    @property
    def control(self) -> str:
        """Channel: announces configuration changes."""
        return f"{self.prefix}control"

    @property
    def service(self) -> str:
        """String with a TTL: present while the service runs."""
        return f"{self.prefix}service"

    @property
    def streams(self) -> str:
        """Hash: the streams the service knows (field = stream id, value = JSON spec)."""
        return f"{self.prefix}streams"

    def epoch(self, stream: str) -> str:
        """Counter: the fencing epoch, incremented each time a process takes the stream on."""
        return f"{self.prefix}epoch:{stream}"

    def outbox_mark(self, publisher: str) -> str:
        """String: the last outbox number a publisher instance wrote (exactly-once events)."""
        return f"{self.prefix}outbox:{publisher}"


def check_redis_url(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in URL_SCHEMES:
        raise RedisUrlError(
            f"Redis URL {redact(url)!r} must start with redis://, rediss:// (TLS) or unix://"
        )
    return url


def connect(
    url: str, *, timeout_s: float = 5.0, per_reply_timeout: bool = True
) -> aioredis.Redis:
    """An asyncio client for ``url`` (AUTH, TLS and unix sockets as the URL says).

    The library's own retries are off: every caller here has its own reconnect policy, and a
    silent re-send of a pipeline is exactly what exactly-once event writing must control.
    ``per_reply_timeout=False`` leaves only the connect timeout to the client, for a caller
    that bounds a whole pipeline itself: a timer per reply costs as much as the reply.
    """
    return aioredis.Redis.from_url(
        check_redis_url(url),
        socket_timeout=timeout_s if per_reply_timeout else None,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def resolve_url(option: str | None, configured: str | None) -> str:
    """The Redis URL a command should use: ``--redis-url`` (or its variable), else the config's.

    The embedded server of ``dfstream serve``/``demo`` is private to that process, so a separate
    command cannot fall back to it; it is told how to say where Redis is instead.
    """
    url = option or configured
    if not url:
        raise RedisUrlError(
            "no Redis URL: pass --redis-url redis://HOST:6379/0 (or rediss://, unix://), or set "
            "DFSTREAM_REDIS__URL, or redis.url in the config file"
        )
    return check_redis_url(url)
