-- Takes a cart for checkout: open -> checking_out, or takes over a hold whose lease ran out.
-- KEYS[1] the cart, KEYS[2] the order id counter
-- ARGV[1] a fresh order uid (used only if the cart has no pending order), ARGV[2] the holder
-- token, ARGV[3] the lease in ms, ARGV[4] TTL in ms
-- Returns {0, customer id, order id, order uid, created_at in µs, product id, quantity, ...}
-- or {code[, order id]} (codes in src/store/redis.rs).
local cart = redis.call('HGETALL', KEYS[1])
if #cart == 0 then
  return {1}
end
local f = {}
local items = {}
for i = 1, #cart, 2 do
  local name = cart[i]
  if string.sub(name, 1, 2) == 'i:' then
    items[#items + 1] = tonumber(string.sub(name, 3))
    items[#items + 1] = tonumber(cart[i + 1])
  else
    f[name] = cart[i + 1]
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if f.status == 'checked_out' then
  return {2, tonumber(f.order_id)}
end
if f.status == 'checking_out' and tonumber(f.lease) > now then
  return {3}
end
if #items == 0 then
  return {5}
end
if f.status == 'checking_out' then
  -- Taking over a lapsed hold: its holder may have published, so the items stay frozen.
  redis.call('HSET', KEYS[1], 'p_pub', '1')
end
if not f.p_id then
  local id = redis.call('INCR', KEYS[2])
  if id > 2147483647 then
    return {7}
  end
  f.p_id = id
  f.p_uid = ARGV[1]
  f.p_at = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', KEYS[1], 'p_id', id, 'p_uid', f.p_uid, 'p_at', f.p_at)
end
redis.call('HSET', KEYS[1], 'status', 'checking_out', 'holder', ARGV[2],
  'lease', string.format('%.0f', now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local reply = {0, tonumber(f.customer), tonumber(f.p_id), f.p_uid, f.p_at}
for i = 1, #items do
  reply[#reply + 1] = items[i]
end
return reply
