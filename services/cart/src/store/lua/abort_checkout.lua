-- The checkout failed: checking_out -> open, keeping the pending order. A no-op unless this
-- holder still holds the cart (a stale one whose lease was taken over must not release it).
-- KEYS[1] the cart
-- ARGV[1] the holder token, ARGV[2] '1' if a publish was attempted (freezes the items),
-- ARGV[3] TTL in ms
-- Returns 1 if the cart was released, 0 if there was nothing to do.
local f = redis.call('HMGET', KEYS[1], 'status', 'holder')
if f[1] ~= 'checking_out' or f[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'open')
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'p_pub', '1')
end
redis.call('HDEL', KEYS[1], 'holder', 'lease')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
