-- Sets the quantity of a product already in an open cart whose items are not frozen, or removes
-- it (quantity 0). The same guards as add_item.lua, then the item must be there.
-- KEYS[1] the cart
-- ARGV[1] the item's field ('i:' .. product id), ARGV[2] quantity (>= 1), or 0 to remove,
-- ARGV[3] TTL in ms
-- Returns {0} on success, else {code[, order id]} (codes in src/store/redis.rs).
local f = redis.call('HMGET', KEYS[1], 'status', 'order_id', 'lease', 'p_pub', ARGV[1])
local status = f[1]
if not status then
  return {1}
end
if status == 'checked_out' then
  return {2, tonumber(f[2])}
end
if status == 'checking_out' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if tonumber(f[3]) > now then
    return {3}
  end
  -- The hold lapsed: its holder vanished, maybe after publishing. Frozen until a retry.
  return {4}
end
if f[4] then
  return {4}
end
if not f[5] then
  return {8}
end
if ARGV[2] == '0' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {0}
