-- Take a token per request (after token_bucket.lua). KEYS[i]: a bucket, the same one possibly
-- several times. ARGV[2i-1]: its tokens per second; ARGV[2i]: its size. Returns, per request,
-- {allowed, whole tokens left, microseconds until full, microseconds until a token}, flattened.
local now = clock_us()
local buckets, result = {}, {}
for i = 1, #KEYS do
  local allowed, left, full_in, wait = take_token(
    buckets, KEYS[i], tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i]), now)
  result[4 * i - 3], result[4 * i - 2], result[4 * i - 1], result[4 * i] =
    allowed, left, full_in, wait
end
save_buckets(buckets)
return result
