"""The JWT replay cache in Redis (``NMS_CDS_REDIS_URL``), shared by every worker of every replica.

One Lua script runs atomically on the server: it drops the issuer's expired entries, refuses a
``jti`` already present (``SET NX EX`` of the jti's own key, expiring with the token) and refuses
when the issuer already holds ``NMS_CDS_REPLAY_MAX_PER_ISSUER`` unexpired entries, so one client
filling its share never locks others out. Keys carry the issuer's hash in a hash tag, so both keys
of one claim live on the same Redis Cluster slot.
"""

from __future__ import annotations

import hashlib
import math

import redis

from cds_service.errors import StoreUnavailable
from cds_service.store.base import ReplayVerdict

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
        self._client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30)
        self._script = self._client.register_script(_CLAIM)

    @staticmethod
    def keys(iss: str, jti: str) -> tuple[str, str]:
        tag = hashlib.sha256(iss.encode("utf-8")).hexdigest()[:32]
        return f"{PREFIX}:{{{tag}}}:jti:{jti}", f"{PREFIX}:{{{tag}}}:issuer"

    def claim(self, iss: str, jti: str, until: float, now: float) -> ReplayVerdict | None:
        ttl = max(1, math.ceil(until - now))
        try:
            answer = self._script(keys=list(self.keys(iss, jti)), args=[now, until, ttl, self.max_per_issuer, jti])
        except redis.RedisError as exc:
            raise StoreUnavailable(_cause(exc)) from None
        verdict = answer.decode() if isinstance(answer, bytes) else str(answer)
        if verdict == "replay":
            return "replay"
        if verdict == "full":
            return "full"
        return None

    def entries(self, iss: str) -> int:
        try:
            return int(self._client.zcard(self.keys(iss, "")[1]))
        except redis.RedisError as exc:
            raise StoreUnavailable(_cause(exc)) from None

    def ping(self) -> None:
        try:
            self._client.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(_cause(exc)) from None

    def close(self) -> None:
        self._client.close()
