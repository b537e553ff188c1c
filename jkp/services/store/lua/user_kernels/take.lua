-- Take a slot for user ARGV[1] under token ARGV[2] until ARGV[4] seconds from now, unless the
-- user holds ARGV[3] already: {1, count before} or {0, count}.
--- @include "includes/now"
--- @include "includes/user_slots"
local held, count = user_slots(KEYS[1], ARGV[1])
if count >= tonumber(ARGV[3]) then return {0, count} end
held[ARGV[2]] = now + tonumber(ARGV[4])
store_user_slots(KEYS[1], ARGV[1], held)
return {1, count}
