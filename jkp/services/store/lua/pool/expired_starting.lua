--- @include "includes/now"
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
