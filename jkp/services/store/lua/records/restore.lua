-- A kernel no key names: an idle one's model (ARGV[2] 'idle', ARGV[3]) onto the idle list, a
-- handed-out one's record (ARGV[2] 'handed', ARGV[3], alias ARGV[4], binding ARGV[5]), or one
-- to shut down (ARGV[2] 'retiring') into the retiring set.
--- @include "includes/now"
--- @include "includes/user_slots"
--- @include "includes/known"
if known(ARGV[1]) then return 0 end
if ARGV[2] == 'idle' then
  redis.call('LPUSH', KEYS[1], ARGV[3])
elseif ARGV[2] == 'retiring' then
  redis.call('HSET', KEYS[6], ARGV[1], now)
else
  write_handed(ARGV[1], ARGV[3], ARGV[4], ARGV[5])
end
return 1
