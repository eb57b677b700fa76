-- Remove unconditionally: the number of entries removed (0 or 1).
local entry, versions, modified = KEYS[1], KEYS[2], KEYS[3]
local field = ARGV[2]

local removed = redis.call('DEL', entry)
forget(versions, modified, field)
if removed > 0 then announce(versions, field) end
return removed
