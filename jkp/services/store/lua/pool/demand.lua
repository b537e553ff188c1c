-- A pool's demand: Redis time, the arrivals (KEYS[1], in buckets of ARGV[2] seconds) of the
-- last ARGV[1] seconds (older ones are dropped), the recent start latencies (KEYS[2]), the
-- earliest live start lease (KEYS[3]), the idle (KEYS[4]) plus live starting kernels, and the
-- pops waiting in line (KEYS[5], waiter -> its deadline) until their deadline.
--- @include "includes/now"
local cutoff = math.floor((now - tonumber(ARGV[1])) / tonumber(ARGV[2]))
local buckets = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  if tonumber(entries[i]) < cutoff then
    redis.call('HDEL', KEYS[1], entries[i])
  else
    table.insert(buckets, entries[i])
    table.insert(buckets, entries[i + 1])
  end
end
local oldest = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local held = redis.call('LLEN', KEYS[4]) + redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
local waiting = 0
for _, entry in ipairs(redis.call('HVALS', KEYS[5])) do
  if cjson.decode(entry)['until'] > now then waiting = waiting + 1 end
end
return {t[1], t[2], buckets, redis.call('LRANGE', KEYS[2], 0, -1), oldest[2] or '', held, waiting}
