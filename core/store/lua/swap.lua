-- update()'s swap: set data if the entry holds `expected`, or is absent when
-- `expected_absent` is "1".  {1} if set, {0, 0, ''} if the entry is absent, {0, 1, current
-- bytes} if it holds something else.
local entry, versions, modified = KEYS[1], KEYS[2], KEYS[3]
local data, field, expected, expected_absent = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'

local current = redis.call('GET', entry)
if (expected_absent and current == false) or (not expected_absent and current == expected) then
  redis.call('SET', entry, data)
  touch(versions, modified, field)
  announce(versions, field)
  return {1}
end
if current == false then return {0, 0, ''} end
return {0, 1, current}
