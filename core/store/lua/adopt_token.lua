-- The server's token: the one already there, else the one offered.
local server_token = KEYS[1]
local offered = ARGV[1]

redis.call('SET', server_token, offered, 'NX')
return redis.call('GET', server_token)
