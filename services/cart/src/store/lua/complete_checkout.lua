-- The broker confirmed the order: checking_out -> checked_out, whoever holds the cart now (the
-- order was placed). A no-op unless the cart's pending order is this one.
-- KEYS[1] the cart
-- ARGV[1] the order uid, ARGV[2] TTL in ms (a checked-out cart stays readable this long)
-- Returns 1 if the cart was closed, 0 if there was nothing to do.
local f = redis.call('HMGET', KEYS[1], 'p_uid', 'p_id')
if f[1] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'checked_out', 'order_id', f[2])
redis.call('HDEL', KEYS[1], 'p_id', 'p_uid', 'p_at', 'p_pub', 'holder', 'lease')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
