-- Forget a dead consumer once it holds nothing, unless it has spoken again meanwhile.
-- KEYS[1]: the workers' sorted set; KEYS[2]: the consumer's claims.
-- ARGV[1]: the consumer's id; ARGV[2]: seconds of silence that make it dead.
-- Returns 1 if it was forgotten, else 0.
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not beat then return 0 end
local now = redis.call('TIME')
local seconds = tonumber(now[1]) + tonumber(now[2]) / 1000000
if tonumber(beat) > seconds - tonumber(ARGV[2]) then return 0 end
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
