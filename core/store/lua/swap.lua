-- update()'s swap: set data if the entry holds `expected`, or is absent when
-- `expected_absent` is "1".  Creating an absent entry needs the server token this store
-- adopted, as create.lua does: {-1} if the server lost it.  Else {1} if set, {0, 0, ''}
-- if the entry is absent, {0, 1, current bytes} if it holds something else.
local entry, versions, modified, server_token = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local data, field, expected, expected_absent, adopted_token = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1', ARGV[5]

local current = redis.call('GET', entry)
if expected_absent and current == false and redis.call('GET', server_token) ~= adopted_token then return {-1} end
if (expected_absent and current == false) or (not expected_absent and current == expected) then
  redis.call('SET', entry, data)
  touch(versions, modified, field)
  announce(versions, field)
  return {1}
end
if current == false then return {0, 0, ''} end
return {0, 1, current}
