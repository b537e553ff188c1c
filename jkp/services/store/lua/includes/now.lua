-- Redis server time in seconds, so leases do not depend on the replicas' clocks.
local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
