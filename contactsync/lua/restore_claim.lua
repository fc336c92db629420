-- Queue again one message a dead consumer held, at most once: a second sweeper, or kombu's own
-- restore, finds the entry gone or changed and leaves it. Nothing is taken from a consumer
-- that has spoken again since it was found silent.
-- KEYS[1]: the workers' sorted set; KEYS[2]: kombu's `unacked` hash; KEYS[3]: its
-- `unacked_index`; KEYS[4]: the consumer's claims; KEYS[5..]: the lists the message goes to.
-- ARGV[1]: the consumer's id; ARGV[2]: seconds of silence that make it dead; ARGV[3]: the
-- delivery tag; ARGV[4]: the `unacked` entry as the sweeper read it; ARGV[5]: the message.
-- Returns 1 if the message was queued again, else 0.
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
local now = redis.call('TIME')
local seconds = tonumber(now[1]) + tonumber(now[2]) / 1000000
if beat and tonumber(beat) > seconds - tonumber(ARGV[2]) then return 0 end
redis.call('SREM', KEYS[4], ARGV[3])
if redis.call('HGET', KEYS[2], ARGV[3]) ~= ARGV[4] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
for i = 5, #KEYS do
  -- The end BRPOP takes from: a message that waited for its dead consumer goes first.
  redis.call('RPUSH', KEYS[i], ARGV[5])
end
return 1
