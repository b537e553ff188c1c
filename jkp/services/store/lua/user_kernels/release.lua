-- Give back user ARGV[1]'s slot under token ARGV[2].
--- @include "includes/now"
--- @include "includes/user_slots"
free_slot(KEYS[1], ARGV[1], ARGV[2])
return 1
