--- @include "includes/now"
return {redis.call('LLEN', KEYS[1]), redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf'),
        redis.call('HLEN', KEYS[3]), redis.call('HLEN', KEYS[4])}
