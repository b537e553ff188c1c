-- Reserve alias ARGV[1] for create ARGV[2], ARGV[3] seconds, unless it is taken: 1 when reserved.
--- @include "includes/now"
--- @include "includes/alias_reservation"
if alias_taken(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
reserve_alias(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
return 1
