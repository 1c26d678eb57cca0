-- Creates an open cart under the next id of the shared counter.
-- KEYS[1] the cart id counter
-- ARGV[1] the cart keys' prefix (the id is appended), ARGV[2] customer id, ARGV[3] TTL in ms
-- Returns the new id, or -1 once ids have left the int32 range.
-- The cart's key is built here because its id is only known here: this is one server, not a
-- cluster, so a script may touch a key it did not declare.
local id = redis.call('INCR', KEYS[1])
if id > 2147483647 then
  return -1
end
local key = ARGV[1] .. id
redis.call('HSET', key, 'customer', ARGV[2], 'status', 'open')
redis.call('PEXPIRE', key, ARGV[3])
return id
