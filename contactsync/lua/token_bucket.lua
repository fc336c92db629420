-- Token buckets: per-key rate limits, shared by the rate-limit script and the accept script
-- (each script is this text followed by its own). A bucket is a hash of `tokens` (may be
-- fractional) and `ts` (microseconds); it refills from the time elapsed on Redis's own clock,
-- so gateways on different machines agree.

local function clock_us()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000000 + tonumber(now[2])
end

-- Take one token (or `cost` tokens, all or none) from bucket `key`, read once per script run
-- however many requests of that key it serves (`buckets` holds what was read). Returns allowed
-- (0 or 1), whole tokens left, microseconds until the bucket is full, microseconds until it
-- holds the tokens asked for.
local function take_token(buckets, key, rate, burst, now, cost)
  cost = cost or 1
  local bucket = buckets[key]
  if bucket == nil then
    local state = redis.call('HMGET', key, 'tokens', 'ts')
    bucket = {tokens = tonumber(state[1]), ts = tonumber(state[2])}
    if bucket.tokens == nil or bucket.ts == nil then
      bucket.tokens = burst
      bucket.ts = now
    end
    buckets[key] = bucket
  end
  if now > bucket.ts then
    bucket.tokens = math.min(burst, bucket.tokens + (now - bucket.ts) * rate / 1000000)
    bucket.ts = now
  end
  local allowed, wait = 0, 0
  if bucket.tokens >= cost then
    bucket.tokens = bucket.tokens - cost
    allowed = 1
  else
    wait = math.ceil((cost - bucket.tokens) * 1000000 / rate)
  end
  bucket.full_in = math.ceil((burst - bucket.tokens) * 1000000 / rate)
  return allowed, math.floor(bucket.tokens), bucket.full_in, wait
end

-- Write back every bucket taken from; each expires once it would be full again.
local function save_buckets(buckets)
  for key, bucket in pairs(buckets) do
    redis.call('HSET', key, 'tokens', tostring(bucket.tokens), 'ts',
               string.format('%.0f', bucket.ts))
    redis.call('PEXPIRE', key, math.ceil(bucket.full_in / 1000) + 1000)
  end
end

