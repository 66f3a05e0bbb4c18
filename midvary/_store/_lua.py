"""The one Lua script behind RedisStore: every operation, atomic, on the server's clock.

It mirrors ``_local.py`` line for line (the contract tests hold them to one behaviour).
Times are seconds from the server's ``TIME``, written with 6 decimals.

KEYS: 1 the namespace's marker, 2 the key's hash (fields fp, rq, st, h, lu, tid),
3 the window's hash (a allowance, g grown at, p paused until), 4 stamps (zset: slot id ->
stamp), 5 slots in flight (zset: slot id -> lease end). All share one ``{namespace}`` hash
tag, so a cluster keeps them in one slot.

ARGV: 1 op, 2 expected marker ('' = none seen yet), 3 fresh marker, 4 holder, 5 lease (s),
6 key ttl (ms), 7 slot id ('' = no slot), 8 count ('' = no limit), 9 window (s),
10 slot lease (s), 11 fingerprint / pause (s), 12 request, 13 task id, 14 refunded ('1').

Returns {status, marker, value}: status 'lost' (the marker is missing or changed), 'ok',
or, for a claim, 'claimed' | 'known' | 'busy' | 'uncertain' | 'conflict'.
"""

SCRIPT = r"""
if redis.replicate_commands then pcall(redis.replicate_commands) end
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local WIN_TTL = 86400000
local function f(x) return string.format('%.6f', x) end

local function touch()
  for i = 3, 5 do redis.call('PEXPIRE', KEYS[i], WIN_TTL) end
end

local function tidy(count, window)
  local dead = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. f(now), 'WITHSCORES')
  for i = 1, #dead, 2 do
    redis.call('ZADD', KEYS[4], dead[i + 1], dead[i])
    redis.call('ZREM', KEYS[5], dead[i])
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', f(now - window))
  local a = tonumber(redis.call('HGET', KEYS[3], 'a')) or count
  if a > count then a = count end
  local g = tonumber(redis.call('HGET', KEYS[3], 'g')) or 0
  if a < count then
    local w = math.floor((now - g) / window)
    if w > 0 then
      a = math.min(count, a + w)
      g = g + w * window
    end
  end
  redis.call('HSET', KEYS[3], 'a', a, 'g', f(g))
  touch()
  return a
end

local function acquire(sid, count, window, lease)
  local a = tidy(count, window)
  if redis.call('ZSCORE', KEYS[5], sid) then return 0 end
  local ns = redis.call('ZCARD', KEYS[4])
  local used = ns + redis.call('ZCARD', KEYS[5])
  local pause = (tonumber(redis.call('HGET', KEYS[3], 'p')) or 0) - now
  if used < a and pause <= 0 then
    redis.call('ZADD', KEYS[5], f(now + lease), sid)
    return 0
  end
  local wait
  if used < a then
    wait = pause
  else
    local excess = used - a
    if excess >= ns then
      local first = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
      wait = math.min(math.max(math.min(window / count, 0.25), 0.01), tonumber(first[2]) - now)
    else
      local s = redis.call('ZRANGE', KEYS[4], excess, excess, 'WITHSCORES')
      wait = tonumber(s[2]) + window - now
    end
    if pause > wait then wait = pause end
  end
  if wait < 0.001 then wait = 0.001 end
  return wait
end

local function take_slot()
  if ARGV[8] == '' then return 0 end
  return acquire(ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]))
end

local function end_slot(refunded)
  if ARGV[7] == '' then return nil end
  redis.call('ZREM', KEYS[5], ARGV[7])
  if refunded then
    redis.call('ZREM', KEYS[4], ARGV[7])
    return nil
  end
  redis.call('ZADD', KEYS[4], f(now), ARGV[7])
  touch()
  return now
end

-- The window's operations need no marker: losing them costs at most one burst.
if op == 'acquire' then
  return {'ok', '', f(take_slot())}
elseif op == 'end' then
  local stamp = end_slot(ARGV[14] == '1')
  return {'ok', '', stamp and f(stamp) or ''}
elseif op == 'slow' then
  local a = tidy(tonumber(ARGV[8]), tonumber(ARGV[9]))
  local p = tonumber(redis.call('HGET', KEYS[3], 'p')) or 0
  if now >= p then
    a = math.max(1, math.floor(a / 2))
    redis.call('HSET', KEYS[3], 'a', a)
  end
  redis.call('HSET', KEYS[3], 'g', f(now), 'p', f(math.max(p, now + tonumber(ARGV[11]))))
  return {'ok', '', tostring(a)}
elseif op == 'allowance' then
  return {'ok', '', tostring(tidy(tonumber(ARGV[8]), tonumber(ARGV[9])))}
end

local epoch = redis.call('GET', KEYS[1])
if not epoch then
  if ARGV[2] ~= '' then return {'lost', '', ''} end
  epoch = ARGV[3]
  redis.call('SET', KEYS[1], epoch)
elseif ARGV[2] ~= '' and ARGV[2] ~= epoch then
  return {'lost', '', ''}
end

local rec = KEYS[2]
local holder = ARGV[4]
local st = redis.call('HGET', rec, 'st')

local function held()
  return st and redis.call('HGET', rec, 'h') == holder and (st == 'claimed' or st == 'sending')
end

local function claimed()
  if ARGV[7] == '' then return {'claimed', epoch, ''} end
  local wait = take_slot()
  if wait == 0 then redis.call('HSET', rec, 'st', 'sending') end
  return {'claimed', epoch, f(wait)}
end

if op == 'claim' then
  local lease_until = f(now + tonumber(ARGV[5]))
  if not st then
    redis.call('HSET', rec, 'fp', ARGV[11], 'rq', ARGV[12], 'st', 'claimed', 'h', holder,
      'lu', lease_until)
    redis.call('PEXPIRE', rec, ARGV[6])
    return claimed()
  end
  if redis.call('HGET', rec, 'fp') ~= ARGV[11] then
    return {'conflict', epoch, redis.call('HGET', rec, 'rq')}
  end
  if st == 'submitted' or st == 'done' then
    return {'known', epoch, redis.call('HGET', rec, 'tid') or ''}
  end
  if st == 'uncertain' then return {'uncertain', epoch, ''} end
  local lu = tonumber(redis.call('HGET', rec, 'lu'))
  if redis.call('HGET', rec, 'h') == holder then
    redis.call('HSET', rec, 'lu', lease_until)
    if st == 'sending' then return {'claimed', epoch, f(0)} end
  elseif lu > now then
    return {'busy', epoch, f(lu - now)}
  elseif st == 'sending' then
    redis.call('HSET', rec, 'st', 'uncertain')
    return {'uncertain', epoch, ''}
  else
    redis.call('HSET', rec, 'h', holder, 'lu', lease_until)
  end
  return claimed()
elseif op == 'send' then
  if not held() then return {'lost', epoch, 'claim'} end
  redis.call('HSET', rec, 'lu', f(now + tonumber(ARGV[5])))
  local wait = take_slot()
  if wait == 0 then redis.call('HSET', rec, 'st', 'sending') end
  return {'ok', epoch, f(wait)}
elseif op == 'renew' then
  if not held() then return {'ok', epoch, '0'} end
  redis.call('HSET', rec, 'lu', f(now + tonumber(ARGV[5])))
  return {'ok', epoch, '1'}
elseif op == 'task' then
  end_slot(false)
  if not st then return {'ok', epoch, '0'} end
  if st == 'submitted' or st == 'done' then
    return {'ok', epoch, redis.call('HGET', rec, 'tid') == ARGV[13] and '1' or '0'}
  end
  if redis.call('HGET', rec, 'h') ~= holder and st ~= 'uncertain' then
    return {'ok', epoch, '0'}
  end
  redis.call('HSET', rec, 'st', 'submitted', 'tid', ARGV[13])
  redis.call('PEXPIRE', rec, ARGV[6])
  return {'ok', epoch, '1'}
elseif op == 'release' then
  end_slot(true)
  if not held() then return {'ok', epoch, '0'} end
  redis.call('DEL', rec)
  return {'ok', epoch, '1'}
elseif op == 'unsend' then
  end_slot(true)
  if not held() then return {'ok', epoch, '0'} end
  redis.call('HSET', rec, 'st', 'claimed')
  return {'ok', epoch, '1'}
elseif op == 'uncertain' then
  end_slot(false)
  if not held() then return {'ok', epoch, '0'} end
  redis.call('HSET', rec, 'st', 'uncertain')
  return {'ok', epoch, '1'}
elseif op == 'done' then
  if not st or redis.call('HGET', rec, 'tid') ~= ARGV[13] then return {'ok', epoch, '0'} end
  redis.call('HSET', rec, 'st', 'done')
  return {'ok', epoch, '1'}
end
return redis.error_reply('midvary: unknown store operation ' .. tostring(op))
"""
