-- User ARGV[1]'s slot under token ARGV[2] becomes kernel ARGV[3]'s, recorded as cold (KEYS[2]).
--- @include "includes/now"
--- @include "includes/user_slots"
local held = user_slots(KEYS[1], ARGV[1])
held[ARGV[2]] = nil
held[ARGV[3]] = 0
store_user_slots(KEYS[1], ARGV[1], held)
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
return 1
