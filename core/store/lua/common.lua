-- Shared by every mutation script (prepended to each): record when an entry changed, on
-- the server's clock, and announce it on the prefix's channel.
--   versions: "{prefix}:v:{space}", a hash of key -> version (also the space's index)
--   modified: "{prefix}:m:{space}", a hash of key -> epoch ms of its last change
local function touch(versions, modified, field)
  redis.call('HINCRBY', versions, field, 1)
  local t = redis.call('TIME')
  redis.call('HSET', modified, field, t[1] * 1000 + math.floor(t[2] / 1000))
end

local function announce(versions, field)
  local prefix, space = string.match(versions, '^(.*):v:(.*)$')
  redis.call('PUBLISH', prefix .. ':changes', space .. string.char(10) .. field)
end

local function forget(versions, modified, field)
  redis.call('HDEL', versions, field)
  redis.call('HDEL', modified, field)
end
