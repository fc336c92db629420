-- Append change events to the stream in one call: one round trip and one command for the
-- relay to build, however many events (a pipeline of XADDs costs the relay a command each).
-- The relay bounds a call by bytes (CONTACTSYNC_RELAY_CALL_MAX_BYTES), not only by count.
-- KEYS[1]: the stream. ARGV[1]: its approximate maximum length. ARGV[2..]: event payloads.
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[i])
end
return #ARGV - 1
