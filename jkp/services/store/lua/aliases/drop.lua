-- Drop alias ARGV[1] when it is still create ARGV[2]'s reservation, or bound to kernel ARGV[3].
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return 0 end
entry = cjson.decode(entry)
if (ARGV[2] ~= '' and entry['reserved_by'] == ARGV[2])
   or (ARGV[3] ~= '' and entry['kernel_id'] == ARGV[3]) then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
