-- Accept one flush of updates, all or nothing: reserve their idempotency keys, allocate their
-- sequence numbers, store their bodies, mark them pending and push their task messages.
--
-- KEYS[1]: the sequence counter; KEYS[2]: the pending set;
-- then m idempotency keys, then n body keys (one per update), then k queue lists (one per
-- task message).
-- ARGV[1..4]: n, seconds an in-flight idempotency marker lives, m, k;
-- then m in-flight records (one per idempotency key), n update ids, n body tails (each body
-- but its leading `{"seq":N,`, which is spliced in here), k task messages.
--
-- Returns {first sequence number} when the flush is accepted. When any idempotency key is
-- already taken, nothing is written and it returns {0, i, record, ...}: each taken key's
-- position (1..m) and what it holds. The caller answers those and sends the rest again.
local n, ttl, m, k = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local taken = {0}
for i = 1, m do
  local existing = redis.call('GET', KEYS[2 + i])
  if existing then
    taken[#taken + 1] = i
    taken[#taken + 1] = existing
  end
end
if #taken > 1 then
  return taken
end
for i = 1, m do
  redis.call('SET', KEYS[2 + i], ARGV[4 + i], 'EX', ttl)
end
local now = redis.call('TIME')
-- Server time in microseconds is a floor, so numbers never go backwards even when the
-- counter itself was lost with Redis's data.
local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local first = math.max(current + 1, floor)
redis.call('SET', KEYS[1], string.format('%.0f', first + n - 1))
local ids, tails, messages = 4 + m, 4 + m + n, 4 + m + 2 * n
for i = 1, n do
  local seq = string.format('%.0f', first + i - 1)
  redis.call('SET', KEYS[2 + m + i], '{"seq":' .. seq .. ',' .. ARGV[tails + i])
  -- The sequence is the Redis time it was accepted at (or just past it): the score.
  redis.call('ZADD', KEYS[2], seq, ARGV[ids + i])
end
for j = 1, k do
  redis.call('LPUSH', KEYS[2 + m + n + j], ARGV[messages + j])
end
return {string.format('%.0f', first)}
