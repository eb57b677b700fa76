-- Compare-and-delete on the exact bytes: 1 if removed.
local entry, versions, modified = KEYS[1], KEYS[2], KEYS[3]
local field, expected = ARGV[2], ARGV[3]

if redis.call('GET', entry) ~= expected then return 0 end
redis.call('DEL', entry)
forget(versions, modified, field)
announce(versions, field)
return 1
