-- Allocate sequence numbers and reserve idempotency keys for one flush of accepted updates.
-- KEYS[1]: the sequence counter; KEYS[2..]: idempotency keys, one per update that has one.
-- ARGV[1]: how many sequence numbers to allocate; ARGV[2]: seconds an in-flight marker lives;
-- ARGV[3..]: per idempotency key, the in-flight record to store when the key is new.
-- Returns the first allocated number, then per idempotency key '' (reserved) or its record.
local n = tonumber(ARGV[1])
local now = redis.call('TIME')
-- Server time in microseconds is a floor, so numbers never go backwards even when the
-- counter itself was lost with Redis's data.
local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local first = math.max(current + 1, floor)
redis.call('SET', KEYS[1], string.format('%.0f', first + n - 1))
local result = {string.format('%.0f', first)}
for i = 2, #KEYS do
  local existing = redis.call('GET', KEYS[i])
  if existing then
    result[i] = existing
  else
    redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', tonumber(ARGV[2]))
    result[i] = ''
  end
end
return result
