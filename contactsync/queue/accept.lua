-- Accept one flush of updates, all or nothing (after token_bucket.lua): take each one's
-- rate-limit token, reserve its idempotency key, allocate sequence numbers, store the bodies,
-- mark them pending and push the task messages.
--
-- KEYS[1]: the sequence counter; KEYS[2]: the pending set; then r rate-limit buckets (one per
-- update that spends a token, the same bucket possibly several times), m idempotency keys,
-- n body keys (one per update), k queue lists (one per task message), the set of accounts with
-- a backlog, a accounts' backlogs (one sorted set per account in the flush).
-- ARGV[1..5]: n, seconds an in-flight idempotency marker lives, m, k, r; then r pairs (tokens
-- per second, bucket size), m in-flight records, n update ids, n body tails (each body but
-- its leading `{"seq":N,`, which is spliced in here), k task messages; then a, the most
-- updates an account may have waiting, a account ids, and n account numbers (1 to a: whose
-- each update is).
--
-- Returns {first sequence number, then per bucket entry: tokens left, microseconds until
-- full, microseconds until a token}. When something refuses part of the flush, nothing at all
-- is written (not even a bucket) and it returns {0, 'rate', i, left, full, wait, ...} for the
-- bucket entries without a token, else {0, 'idempotency', i, record, ...} for the idempotency
-- keys already taken (i counts from 1 within its kind), else {0, 'backlog', i, ...} for the
-- updates (i from 1 to n) of the accounts whose backlog they would take over the limit. The
-- caller answers those and sends the rest again.
local n, ttl, m, k, r = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), tonumber(ARGV[5])
local buckets_at, records_at = 2, 5 + 2 * r
local idem_at, bodies_at, queues_at = 2 + r, 2 + r + m, 2 + r + m + n
local ids_at, tails_at, messages_at = records_at + m, records_at + m + n, records_at + m + 2 * n
local accounts_at = messages_at + k
local a, most = tonumber(ARGV[accounts_at + 1]), tonumber(ARGV[accounts_at + 2])
local owners_at, registry_at = accounts_at + 2 + a, queues_at + k + 1

-- Run `command` (on `key`, unless nil) with `values` as its arguments, in pairs: as few calls
-- as Lua's stack allows (unpack of more than a few thousand values fails).
local function call_in_chunks(command, key, values)
  local step = 2000
  for from = 1, #values, step do
    local upto = math.min(from + step - 1, #values)
    if key then
      redis.call(command, key, unpack(values, from, upto))
    else
      redis.call(command, unpack(values, from, upto))
    end
  end
end

local now = clock_us()
local buckets, granted, refused = {}, {}, {0, 'rate'}
for i = 1, r do
  local allowed, left, full_in, wait = take_token(
    buckets, KEYS[buckets_at + i], tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i]), now)
  if allowed == 1 then
    local at = #granted
    granted[at + 1], granted[at + 2], granted[at + 3] = left, full_in, wait
  else
    local at = #refused
    refused[at + 1], refused[at + 2], refused[at + 3], refused[at + 4] = i, left, full_in, wait
  end
end
if #refused > 2 then
  return refused
end

local taken, first_record = {0, 'idempotency'}, {}
for i = 1, m do
  local key = KEYS[idem_at + i]
  -- A key twice in one flush: the second finds the first in flight, as it would a moment later.
  local existing = first_record[key] or redis.call('GET', key)
  if existing then
    local at = #taken
    taken[at + 1], taken[at + 2] = i, existing
  else
    first_record[key] = ARGV[records_at + i]
  end
end
if #taken > 2 then
  return taken
end

-- An account's flush goes in whole or not at all: a batch is not cut off at the limit.
local adding, over = {}, {}
for i = 1, n do
  local j = tonumber(ARGV[owners_at + i])
  adding[j] = (adding[j] or 0) + 1
end
for j, count in pairs(adding) do
  if redis.call('ZCARD', KEYS[registry_at + j]) + count > most then
    over[j] = true
  end
end
if next(over) then
  local full = {0, 'backlog'}
  for i = 1, n do
    if over[tonumber(ARGV[owners_at + i])] then
      full[#full + 1] = i
    end
  end
  return full
end

save_buckets(buckets)
for i = 1, m do
  redis.call('SET', KEYS[idem_at + i], ARGV[records_at + i], 'EX', ttl)
end
-- Server time in microseconds is a floor, so numbers never go backwards even when the
-- counter itself was lost with Redis's data.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local first = math.max(current + 1, now)
redis.call('SET', KEYS[1], string.format('%.0f', first + n - 1))
-- One command per kind of write, not one per update: each command a script runs costs Redis
-- its dispatch and an entry in the append-only file, about half its time per update.
local bodies, pending, owned = {}, {}, {}
for i = 1, n do
  local seq = string.format('%.0f', first + i - 1)
  local id = ARGV[ids_at + i]
  bodies[#bodies + 1] = KEYS[bodies_at + i]
  bodies[#bodies + 1] = '{"seq":' .. seq .. ',' .. ARGV[tails_at + i]
  -- The sequence is the Redis time it was accepted at (or just past it): the score.
  pending[#pending + 1] = seq
  pending[#pending + 1] = id
  local j = tonumber(ARGV[owners_at + i])
  local entries = owned[j]
  if entries == nil then
    entries = {}
    owned[j] = entries
  end
  entries[#entries + 1] = seq
  entries[#entries + 1] = id
end
call_in_chunks('MSET', nil, bodies)
call_in_chunks('ZADD', KEYS[2], pending)
for j, entries in pairs(owned) do
  call_in_chunks('ZADD', KEYS[registry_at + j], entries)
end
for j = 1, a do
  redis.call('SADD', KEYS[registry_at], ARGV[accounts_at + 2 + j])
end
for j = 1, k do
  redis.call('LPUSH', KEYS[queues_at + j], ARGV[messages_at + j])
end
local result = {string.format('%.0f', first)}
for _, value in ipairs(granted) do
  result[#result + 1] = value
end
return result
