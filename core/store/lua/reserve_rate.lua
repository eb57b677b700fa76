-- One GCRA reservation, the same step as core.ratelimit.gcra_step, on the provider's JSON
-- state.  The plan is ReservePlan.to_json(): an array (cheaper to decode than an object)
-- whose fields are unpacked below, then buckets as (name, share, burst) triples from
-- plan[12]: the model's (name "" if none), then each path's.  Answers start (or ''),
-- bucket, effective limit and, if it changed, the one before, with 17 digits: exactly as
-- Python computes them.  A state ProviderRateState would refuse (a number out of range, a
-- grantsPerSecond key that is no epoch second) is started afresh, as Python starts afresh
-- from a record that does not validate.
local entry, versions, modified = KEYS[1], KEYS[2], KEYS[3]
local field, now, plan = ARGV[1], tonumber(ARGV[2]), cjson.decode(ARGV[3])
local provider, period_ms, horizon_ms, requests_per_minute, burst = plan[1], plan[2], plan[3], plan[4], plan[5]
local fresh_effective, adaptive, high, recovery_factor, quiet_ms = plan[6], plan[7], plan[8], plan[9], plan[10]
local grant_slot_s = plan[11]
local MODEL_BUCKET, FIRST_PATH_BUCKET = 12, 15

local function num(v) if type(v) == 'number' then return v end return 0 end
local function exact(x) return string.format('%.17g', x) end
local MIN_MS, MAX_MS = 946684800000, 7258118400000
local function finite(v) return type(v) == 'number' and v == v and v > -math.huge and v < math.huge end
local function absent(v) return v == nil or v == cjson.null end
local function epoch(v) return finite(v) and v >= MIN_MS and v < MAX_MS and math.floor(v) == v end
local function count(v) return finite(v) and v >= 0 and v <= 2^53 and math.floor(v) == v end
local function rate(v) return finite(v) and v >= 0.001 and v <= 1e9 end
local function valid(s)
  if type(s) ~= 'table' or type(s.provider) ~= 'string' then return false end
  if not (rate(s.requestsPerMinute) and rate(s.effectiveRequestsPerMinute)) then return false end
  if not (count(s.burst) and s.burst >= 1 and s.burst <= 1e9) then return false end
  if not ((absent(s.formatVersion) or count(s.formatVersion)) and (absent(s.totalGrants) or count(s.totalGrants))) then return false end
  if not ((absent(s.last429At) or epoch(s.last429At)) and (absent(s.lastChangeAt) or epoch(s.lastChangeAt))) then return false end
  if not absent(s.buckets) then
    if type(s.buckets) ~= 'table' then return false end
    for name, bucket in pairs(s.buckets) do
      if type(name) ~= 'string' or type(bucket) ~= 'table' then return false end
      local tat = bucket.tat
      if not (absent(tat) or (finite(tat) and (tat == 0 or (tat >= MIN_MS and tat < MAX_MS)))) then return false end
    end
  end
  if not absent(s.grantsPerSecond) then
    if type(s.grantsPerSecond) ~= 'table' then return false end
    for second, n in pairs(s.grantsPerSecond) do
      if type(second) ~= 'string' or not string.match(second, '^%d+$') or #second > 13 then return false end
      local at = tonumber(second)
      if at < MIN_MS / 1000 or at >= MAX_MS / 1000 or not count(n) then return false end
    end
  end
  return true
end

local raw = redis.call('GET', entry)
local ok, state = false, nil
if raw then ok, state = pcall(cjson.decode, raw) end
if not ok or not valid(state) then
  state = {formatVersion = 1, provider = provider, buckets = {}, grantsPerSecond = {}, totalGrants = 0}
end
local buckets, grants = state.buckets, state.grantsPerSecond
if type(buckets) ~= 'table' then buckets = {} state.buckets = buckets end
if type(grants) ~= 'table' then grants = {} state.grantsPerSecond = grants end
if state.requestsPerMinute ~= requests_per_minute or state.burst ~= burst then
  state.requestsPerMinute = requests_per_minute
  state.burst = burst
  state.effectiveRequestsPerMinute = fresh_effective
end
local old = num(state.effectiveRequestsPerMinute)
local effective = old
if adaptive and effective < high and now - math.max(num(state.last429At), num(state.lastChangeAt)) >= quiet_ms then
  effective = math.min(high, effective * recovery_factor)
end
local function tat_of(name)  -- booked more than a week ahead (MAX_BOOKED_AHEAD_MS): ignored
  local bucket = buckets[name]
  if type(bucket) == 'table' and num(bucket.tat) <= now + 604800000 then return num(bucket.tat) end
  return 0
end
local function allowed(i)  -- the bucket at plan[i] (name), plan[i + 1] (share), plan[i + 2] (burst)
  local emission = period_ms / math.max(effective * plan[i + 1], 1e-9)
  local tolerance = (math.max(1, math.floor(plan[i + 2])) - 1) * emission
  return math.max(now, tat_of(plan[i]) - tolerance), emission
end
local choice, start, emission = FIRST_PATH_BUCKET, allowed(FIRST_PATH_BUCKET)
for i = FIRST_PATH_BUCKET + 3, #plan, 3 do
  local at, e = allowed(i)
  if at < start then choice, start, emission = i, at, e end
end
local model_emission = nil
if plan[MODEL_BUCKET] ~= '' then
  local at
  at, model_emission = allowed(MODEL_BUCKET)
  if at > start then start = at end
end
local changed = effective ~= old
if changed then
  state.effectiveRequestsPerMinute = effective
  state.lastChangeAt = now
end
local booked_at = ''
if start - now <= horizon_ms then
  local function book(name, e)
    buckets[name] = {tat = math.ceil((math.max(tat_of(name), start) + e) * 10) / 10}
  end
  book(plan[choice], emission)
  if model_emission then book(plan[MODEL_BUCKET], model_emission) end
  local oldest = math.floor(now / 1000) - 60 - grant_slot_s
  for second in pairs(grants) do
    if tonumber(second) <= oldest then grants[second] = nil end
  end
  local second = tostring(math.floor(math.floor(start / 1000) / grant_slot_s) * grant_slot_s)
  grants[second] = num(grants[second]) + 1
  state.totalGrants = num(state.totalGrants) + 1
  booked_at = exact(start)
  changed = true
end
if changed then
  redis.call('SET', entry, cjson.encode(state))
  touch(versions, modified, field)
  announce(versions, field)
end
local before = effective ~= old and exact(old) or ''
return table.concat({booked_at, plan[choice], exact(effective), before}, string.char(10))
