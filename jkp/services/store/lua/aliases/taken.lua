-- Whether alias ARGV[1] is bound, or reserved by a create whose reservation has not run out.
--- @include "includes/now"
--- @include "includes/alias_reservation"
return alias_taken(KEYS[1], ARGV[1], '') and 1 or 0
