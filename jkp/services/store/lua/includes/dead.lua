-- Whether a replica's heartbeat (in the sorted set REPLICAS, id -> expiry) has run out.
local function dead(replicas, replica)
  local expiry = redis.call('ZSCORE', replicas, replica)
  return (not expiry) or tonumber(expiry) <= now
end
