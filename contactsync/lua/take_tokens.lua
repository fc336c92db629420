-- Take ARGV[3] tokens at once, all or none, from bucket KEYS[1] (after token_bucket.lua):
-- a batch's items from its key's update bucket. ARGV[1]: tokens per second; ARGV[2]: size.
-- Returns {allowed, whole tokens left, microseconds until full, microseconds until enough}.
local now = clock_us()
local buckets = {}
local allowed, left, full_in, wait = take_token(
  buckets, KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), now, tonumber(ARGV[3]))
save_buckets(buckets)
return {allowed, left, full_in, wait}
