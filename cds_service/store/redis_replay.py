"""The JWT replay cache in Redis (``NMS_CDS_REDIS_URL``), shared by every worker of every replica.

One Lua script runs atomically on the server: it drops the issuer's expired entries, refuses a
``jti`` already present (``SET NX EX`` of the jti's own key, expiring with the token) and refuses
when the issuer already holds ``NMS_CDS_REPLAY_MAX_PER_ISSUER`` unexpired entries, so one client
filling its share never locks others out. Keys carry the issuer's hash in a hash tag, so both keys
of one claim live on the same Redis Cluster slot.

Eviction: both keys carry a TTL (they expire with the token), which makes them candidates for every
``volatile-*`` policy as well as every ``allkeys-*`` one; an evicted unexpired jti lets its token be replayed.
Only ``noeviction`` keeps them: :meth:`RedisReplayGuard.eviction_problem` is checked when the service starts
(docs/security.md, section 2.4).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cds_service.errors import StoreUnavailable
from cds_service.store.base import ReplayVerdict
from cds_service.store.deadline import Breaker

T = TypeVar("T")
PREFIX = "nms-cds:replay"

# KEYS[1] jti key, KEYS[2] issuer's sorted set (member jti, score expiry).
# ARGV: now, until, ttl seconds, cap per issuer, jti.
_CLAIM = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) and redis.call('EXISTS', KEYS[1]) == 0 then
  return 'full'
end
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
  return 'replay'
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
local ttl = redis.call('TTL', KEYS[2])
if ttl < tonumber(ARGV[3]) then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
return 'ok'
"""


def _cause(exc: redis.RedisError) -> str:
    if isinstance(exc, redis.TimeoutError):
        return "Redis did not answer in time"
    if isinstance(exc, redis.ConnectionError):
        return "cannot reach the Redis server"
    if isinstance(exc, redis.AuthenticationError | redis.ResponseError) and "NOAUTH" in str(exc):
        return "Redis refused the credentials"
    return f"Redis error ({type(exc).__name__})"


class RedisReplayGuard:
    def __init__(self, url: str, *, timeout: float = 5.0, max_per_issuer: int = 100_000) -> None:
        self.max_per_issuer = max_per_issuer
        # no retries: a silent server would otherwise cost several timeouts per call
        self._client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
        self._script = self._client.register_script(_CLAIM)
        self._breaker = Breaker(self._client.ping)

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one Redis command; after a timeout, fail fast for a while (see :class:`Breaker`)."""
        self._breaker.before()
        try:
            result = fn()
        except redis.TimeoutError as exc:
            self._breaker.failed(_cause(exc))
            raise StoreUnavailable(_cause(exc)) from None
        except redis.RedisError as exc:
            raise StoreUnavailable(_cause(exc)) from None
        self._breaker.succeeded()
        return result

    def eviction_problem(self, *, checked: bool = False) -> str | None:
        """Why this Redis may drop replay entries before they expire (None: it cannot).

        ``checked``: the operator stated (NMS_CDS_REDIS_EVICTION_CHECKED) that the policy is safe, for a Redis
        where ``CONFIG GET`` is disabled or renamed."""
        try:
            answer = self._call(lambda: self._client.config_get("maxmemory-policy"))
        except StoreUnavailable as exc:
            if "Redis error" not in exc.cause:
                raise
            answer = {}
        policy = answer.get("maxmemory-policy") if isinstance(answer, dict) else None
        if isinstance(policy, bytes):
            policy = policy.decode("utf-8", "replace")
        if policy == "noeviction":
            return None
        if checked:
            return None
        if not policy:
            return ("Redis refused CONFIG GET maxmemory-policy, so its eviction policy cannot be checked; set "
                    "maxmemory-policy noeviction on the server and NMS_CDS_REDIS_EVICTION_CHECKED=true")
        return (f"Redis maxmemory-policy is {policy[:40]}: it may evict unexpired replay entries (they carry a "
                "TTL, so volatile-* policies evict them too) and let a replayed token through; set "
                "maxmemory-policy noeviction")

    @staticmethod
    def keys(iss: str, jti: str) -> tuple[str, str]:
        tag = hashlib.sha256(iss.encode("utf-8")).hexdigest()[:32]
        return f"{PREFIX}:{{{tag}}}:jti:{jti}", f"{PREFIX}:{{{tag}}}:issuer"

    def claim(self, iss: str, jti: str, until: float, now: float) -> ReplayVerdict | None:
        ttl = max(1, math.ceil(until - now))
        answer = self._call(lambda: self._script(keys=list(self.keys(iss, jti)),
                                                 args=[now, until, ttl, self.max_per_issuer, jti]))
        verdict = answer.decode() if isinstance(answer, bytes) else str(answer)
        if verdict == "replay":
            return "replay"
        if verdict == "full":
            return "full"
        return None

    def entries(self, iss: str) -> int:
        return int(self._call(lambda: self._client.zcard(self.keys(iss, "")[1])))

    def ping(self) -> None:
        self._call(self._client.ping)

    def close(self) -> None:
        self._client.close()
