-- Create-if-absent, only on a server that still holds the token this store adopted:
-- {-1} if it does not (restarted or flushed: look at the server first), {1} if created,
-- else {0, what holds the key, its version, its modification time}.
local entry, versions, modified, server_token = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local data, field, adopted_token = ARGV[1], ARGV[2], ARGV[3]

if redis.call('GET', server_token) ~= adopted_token then return {-1} end
if not redis.call('SET', entry, data, 'NX') then
  return {0, redis.call('GET', entry) or '', redis.call('HGET', versions, field) or '', redis.call('HGET', modified, field) or ''}
end
touch(versions, modified, field)
announce(versions, field)
return {1}
