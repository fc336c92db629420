-- A consumer says it is alive, and learns which consumers are not, in one round trip. Redis's
-- clock, not the hosts': workers on hosts whose clocks disagree still agree on who is silent.
-- KEYS[1]: the workers' sorted set. ARGV[1]: this consumer's id; ARGV[2]: seconds of silence
-- after which a consumer is dead. Returns the ids of the dead consumers.
local now = redis.call('TIME')
local seconds = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZADD', KEYS[1], seconds, ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (seconds - tonumber(ARGV[2])))
