-- Set an entry unconditionally.
local entry, versions, modified = KEYS[1], KEYS[2], KEYS[3]
local data, field = ARGV[1], ARGV[2]

redis.call('SET', entry, data)
touch(versions, modified, field)
announce(versions, field)
return 1
