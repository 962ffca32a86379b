"""The publisher's Lua scripts: what Redis runs atomically for it."""

# KEYS: events stream, this publisher's mark. ARGV: number, payload, maxlen, channel, mark TTL.
# The channel copy gets the entry id, so a live listener can switch to XREAD without a gap.
WRITE_EVENT = """
local done = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) <= done then
  return false
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'event', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[5])
redis.call('PUBLISH', ARGV[4], '{"id":"' .. id .. '",' .. string.sub(ARGV[2], 2))
return id
"""

# ARGV: channel, message, channel, message ... One script call replaces a batch of PUBLISH
# commands: a single reply instead of one per message, which is most of a client's cost.
PUBLISH_MANY = """
for i = 1, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
"""

# KEYS: service key. ARGV: our instance id. Deletes the liveness key only if it is ours.
RELEASE_SERVICE = """
local value = redis.call('GET', KEYS[1])
if value and cjson.decode(value)['instance'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
