-- Compare-and-swap on the exact bytes: 1 if replaced, 0 if the entry holds something else.
local entry, versions, modified = KEYS[1], KEYS[2], KEYS[3]
local data, field, expected = ARGV[1], ARGV[2], ARGV[3]

if redis.call('GET', entry) ~= expected then return 0 end
redis.call('SET', entry, data)
touch(versions, modified, field)
announce(versions, field)
return 1
