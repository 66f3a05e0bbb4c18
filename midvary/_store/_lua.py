"""RedisStore's Lua scripts: one per operation, atomic, on the server's clock.

They are the Redis twin of ``_local.py`` (the keys) and of ``_ratelimit.Window`` (the
submission window); the shared contract tests hold the three stores to one behaviour. Each
script is its operation's body after the shared parts it needs (:data:`WINDOW`,
:data:`KEYS`), and names its arguments at its top. Times are seconds from the server's
``TIME``, written with 6 decimals.

Redis keys, all under one ``{namespace}`` hash tag so that a cluster keeps them in one slot:

- ``marker``: the namespace's marker (a random string; a missing or changed one means the
  server lost its data);
- ``record``: an unfinished submission key's record, a string holding the JSON array
  ``[state, fingerprint, task id, holder, lease end, request]``, expiring with the key. A
  record written by midvary 0.x as a hash (fields fp, rq, st, h, lu, tid) is read as well
  and rewritten as a string when it changes;
- ``done``: one hash of the namespace's done keys, key -> ``"<expiry> <fingerprint> <task
  id>"`` (expiry in hex seconds, the fingerprint's first 16 hex digits): all a finished key
  needs, without a Redis key, request and expiry entry of its own. Each key expires by its
  own time, checked when it is read; every move to done also drops the expired ones among a
  few random fields, and the hash expires once its last key would;
- ``win``: the window's hash (a allowance, g grown at, p paused until); ``stamps``: a
  sorted set (slot id -> stamp); ``flight``: a sorted set (slot id -> lease end).

A key operation returns ``{status, marker, value}``: status ``lost`` (the marker is missing
or changed; ``value`` is empty) or ``ok`` (or, for a claim, ``claimed`` | ``known`` |
``busy`` | ``uncertain`` | ``conflict``; for a lost claim, ``lost`` with ``value`` "claim").
"""

from typing import Final

#: The window, shared by every script that takes or ends a slot: each script first names
#: the window's hash, stamps and flight (locals ``W``, ``STAMPS``, ``FLIGHT``).
WINDOW: Final = r"""
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local WIN_TTL = 86400000
local MIN_WAIT = 0.001
local function f(x) return string.format('%.6f', x) end

local function touch()
  redis.call('PEXPIRE', W, WIN_TTL)
  redis.call('PEXPIRE', STAMPS, WIN_TTL)
  redis.call('PEXPIRE', FLIGHT, WIN_TTL)
end

-- Window.tidy: dead slots become stamps, old stamps leave, the allowance grows back.
local function tidy(count, window)
  local dead = redis.call('ZRANGEBYSCORE', FLIGHT, '-inf', '(' .. f(now), 'WITHSCORES')
  for i = 1, #dead, 2 do
    redis.call('ZADD', STAMPS, dead[i + 1], dead[i])
    redis.call('ZREM', FLIGHT, dead[i])
  end
  redis.call('ZREMRANGEBYSCORE', STAMPS, '-inf', f(now - window))
  local a = tonumber(redis.call('HGET', W, 'a')) or count
  if a > count then a = count end
  local g = tonumber(redis.call('HGET', W, 'g')) or 0
  if a < count then
    local w = math.floor((now - g) / window)
    if w > 0 then
      a = math.min(count, a + w)
      g = g + w * window
    end
  end
  redis.call('HSET', W, 'a', a, 'g', f(g))
  touch()
  return a
end

-- Window.acquire, then Window.poll_wait when every slot is a POST in flight.
local function acquire(sid, count, window, lease)
  local a = tidy(count, window)
  if redis.call('ZSCORE', FLIGHT, sid) then return 0 end
  local ns = redis.call('ZCARD', STAMPS)
  local used = ns + redis.call('ZCARD', FLIGHT)
  local pause = (tonumber(redis.call('HGET', W, 'p')) or 0) - now
  if used < a and pause <= 0 then
    redis.call('ZADD', FLIGHT, f(now + lease), sid)
    return 0
  end
  local wait
  if used < a then
    wait = pause
  else
    local excess = used - a
    if excess >= ns then
      local first = redis.call('ZRANGE', FLIGHT, 0, 0, 'WITHSCORES')
      wait = math.min(math.max(math.min(window / count, 0.25), 0.01), tonumber(first[2]) - now)
    else
      local s = redis.call('ZRANGE', STAMPS, excess, excess, 'WITHSCORES')
      wait = tonumber(s[2]) + window - now
    end
    if pause > wait then wait = pause end
  end
  if wait < MIN_WAIT then wait = MIN_WAIT end
  return wait
end

-- Window.end: a stamp now, or nothing when refunded.
local function end_slot(sid, refunded)
  if sid == '' then return nil end
  redis.call('ZREM', FLIGHT, sid)
  if refunded then
    redis.call('ZREM', STAMPS, sid)
    return nil
  end
  redis.call('ZADD', STAMPS, f(now), sid)
  touch()
  return now
end

-- A slot for a key's POST ('' count: no limit, taken at once).
local function take_slot(sid, count, window, lease)
  if count == '' then return 0 end
  return acquire(sid, tonumber(count), tonumber(window), tonumber(lease))
end
"""

#: What every key operation starts with. KEYS: 1 marker, 2 record, 3 done, 4-6 the window.
#: ARGV: 1 the marker this process saw ('' = none yet), 2 a fresh marker, 3 the key; then
#: the operation's own.
KEYS: Final = (
    r"""
local MARKER, RECORD, DONE = KEYS[1], KEYS[2], KEYS[3]
local W, STAMPS, FLIGHT = KEYS[4], KEYS[5], KEYS[6]
local KEY = ARGV[3]
"""
    + WINDOW
    + r"""
local epoch = redis.call('GET', MARKER)
if not epoch then
  if ARGV[1] ~= '' then return {'lost', '', ''} end
  epoch = ARGV[2]
  redis.call('SET', MARKER, epoch)
elseif ARGV[1] ~= '' and ARGV[1] ~= epoch then
  return {'lost', '', ''}
end

-- A done entry: its expiry (hex seconds), the first FP_KEPT characters of its fingerprint
-- (hex: no space; 64 bits tell two requests apart) and its task id.
local DONE_ENTRY = '^(%x+) (%S*) (.*)$'
local FP_KEPT = 16

-- The key as {st, fp, tid, h, lu, rq} (nil when absent): its record in either encoding,
-- or its entry in the done hash.
local function load()
  local kind = redis.call('TYPE', RECORD).ok
  if kind == 'none' then
    local entry = redis.call('HGET', DONE, KEY)
    if not entry then return nil end
    local expires, fp, tid = string.match(entry, DONE_ENTRY)
    if tonumber(expires, 16) <= now then
      redis.call('HDEL', DONE, KEY)
      return nil
    end
    return {st = 'done', fp = fp, tid = tid, h = '', lu = '0', rq = '', filed = true}
  end
  if kind == 'hash' then
    local h = redis.call('HGETALL', RECORD)
    local r = {}
    for i = 1, #h, 2 do r[h[i]] = h[i + 1] end
    return {st = r.st, fp = r.fp, tid = r.tid or '', h = r.h or '', lu = r.lu or '0',
      rq = r.rq or 'null'}
  end
  local v = cjson.decode(redis.call('GET', RECORD))
  return {st = v[1], fp = v[2], tid = v[3], h = v[4] or '', lu = v[5] or '0',
    rq = v[6] or 'null'}
end

-- A done key moves to the done hash with its expiry; a few random fields of the hash are
-- looked at and the expired ones dropped, so the hash sheds them as fast as it grows.
local function file_done(r, ttl_ms)
  local left = redis.call('PTTL', RECORD)
  if left < 0 then left = tonumber(ttl_ms) end
  local expires = now + math.max(left, 0) / 1000
  redis.call('DEL', RECORD)
  local entry = string.format('%x %s %s', math.ceil(expires), string.sub(r.fp, 1, FP_KEPT), r.tid)
  redis.call('HSET', DONE, KEY, entry)
  local some = redis.call('HRANDFIELD', DONE, 8, 'WITHVALUES')
  for i = 1, #some, 2 do
    if tonumber(string.match(some[i + 1], DONE_ENTRY), 16) <= now then
      redis.call('HDEL', DONE, some[i])
    end
  end
  if redis.call('PTTL', DONE) < (expires - now) * 1000 then
    redis.call('PEXPIREAT', DONE, math.ceil(expires * 1000))
  end
end

-- Write the key: a done one is filed (once: its record's expiry, else ttl_ms); else
-- ttl_ms nil keeps the record's expiry.
local function save(r, ttl_ms)
  if r.st == 'done' then
    if not r.filed then file_done(r, ttl_ms) end
    return
  end
  local v = cjson.encode({r.st, r.fp, r.tid, r.h, r.lu, r.rq})
  if ttl_ms then
    redis.call('SET', RECORD, v, 'PX', ttl_ms)
  else
    redis.call('SET', RECORD, v, 'KEEPTTL')
  end
end

local rec = load()
local function held(holder)
  return rec and rec.h == holder and (rec.st == 'claimed' or rec.st == 'sending')
end
"""
)


def _window_op(body: str) -> str:
    """A window operation: KEYS 1-3 the window; no marker (losing it costs one burst)."""
    return "local W, STAMPS, FLIGHT = KEYS[1], KEYS[2], KEYS[3]\n" + WINDOW + body


def _key_op(body: str) -> str:
    """A key operation: KEYS 1 marker, 2 record, 3 done, 4-6 the window (see :data:`KEYS`)."""
    return KEYS + body


#: Operation name -> script source.
SCRIPTS: Final = {
    "acquire": _window_op(r"""
local slot_id, count, window, lease = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
return f(take_slot(slot_id, count, window, lease))
"""),
    "end": _window_op(r"""
local slot_id, refunded = ARGV[1], ARGV[2] == '1'
local stamp = end_slot(slot_id, refunded)
return stamp and f(stamp) or ''
"""),
    "slow": _window_op(r"""
local count, window, pause_s = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local a = tidy(count, window)
local p = tonumber(redis.call('HGET', W, 'p')) or 0
if now >= p then
  a = math.max(1, math.floor(a / 2))
  redis.call('HSET', W, 'a', a)
end
redis.call('HSET', W, 'g', f(now), 'p', f(math.max(p, now + pause_s)))
return tostring(a)
"""),
    "pause": _window_op(r"""
local pause_s = tonumber(ARGV[1])
local p = math.max(tonumber(redis.call('HGET', W, 'p')) or 0, now + pause_s)
redis.call('HSET', W, 'p', f(p))
return f(p - now)
"""),
    "allowance": _window_op(r"""
local count, window = tonumber(ARGV[1]), tonumber(ARGV[2])
return tostring(tidy(count, window))
"""),
    "claim": _key_op(r"""
local holder, lease, ttl_ms = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local fingerprint, request = ARGV[7], ARGV[8]
local slot_id, count, window, slot_lease = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local lease_until = f(now + lease)

local function claimed(ttl)
  local wait = ''
  if slot_id ~= '' then
    local w = take_slot(slot_id, count, window, slot_lease)
    if w == 0 then rec.st = 'sending' end
    wait = f(w)
  end
  save(rec, ttl)
  return {'claimed', epoch, wait}
end

if not rec then
  rec = {st = 'claimed', fp = fingerprint, tid = '', h = holder, lu = lease_until,
    rq = request}
  return claimed(ttl_ms)
end
if rec.fp ~= (rec.filed and string.sub(fingerprint, 1, FP_KEPT) or fingerprint) then
  return {'conflict', epoch, rec.rq}
end
if rec.st == 'submitted' or rec.st == 'done' then return {'known', epoch, rec.tid} end
if rec.st == 'uncertain' then return {'uncertain', epoch, ''} end
if rec.h == holder then
  rec.lu = lease_until
  if rec.st == 'sending' then
    save(rec)
    return {'claimed', epoch, f(0)}
  end
elseif tonumber(rec.lu) > now then
  return {'busy', epoch, f(tonumber(rec.lu) - now)}
elseif rec.st == 'sending' then
  rec.st = 'uncertain'  -- its sender died with the POST in flight
  save(rec)
  return {'uncertain', epoch, ''}
else  -- claimed, and its holder died before sending: nothing was sent
  rec.h, rec.lu = holder, lease_until
end
return claimed(nil)
"""),
    "send": _key_op(r"""
local holder, lease = ARGV[4], tonumber(ARGV[5])
local slot_id, count, window, slot_lease = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
if not held(holder) then return {'lost', epoch, 'claim'} end
rec.lu = f(now + lease)
local wait = take_slot(slot_id, count, window, slot_lease)
if wait == 0 then rec.st = 'sending' end
save(rec)
return {'ok', epoch, f(wait)}
"""),
    "renew": _key_op(r"""
local holder, lease = ARGV[4], tonumber(ARGV[5])
if not held(holder) then return {'ok', epoch, '0'} end
rec.lu = f(now + lease)
save(rec)
return {'ok', epoch, '1'}
"""),
    "task": _key_op(r"""
local holder, task_id, ttl_ms, slot_id = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
end_slot(slot_id, false)
if not rec then return {'ok', epoch, '0'} end
if rec.st == 'submitted' or rec.st == 'done' then
  return {'ok', epoch, rec.tid == task_id and '1' or '0'}
end
if rec.h ~= holder and rec.st ~= 'uncertain' then return {'ok', epoch, '0'} end
rec.st, rec.tid, rec.h, rec.lu = 'submitted', task_id, '', '0'
save(rec, ttl_ms)
return {'ok', epoch, '1'}
"""),
    "release": _key_op(r"""
local holder, slot_id = ARGV[4], ARGV[5]
end_slot(slot_id, true)
if not held(holder) then return {'ok', epoch, '0'} end
redis.call('DEL', RECORD)
return {'ok', epoch, '1'}
"""),
    "unsend": _key_op(r"""
local holder, slot_id = ARGV[4], ARGV[5]
end_slot(slot_id, true)
if not held(holder) then return {'ok', epoch, '0'} end
rec.st = 'claimed'
save(rec)
return {'ok', epoch, '1'}
"""),
    "uncertain": _key_op(r"""
local holder, slot_id = ARGV[4], ARGV[5]
end_slot(slot_id, false)
if not held(holder) then return {'ok', epoch, '0'} end
rec.st = 'uncertain'
save(rec)
return {'ok', epoch, '1'}
"""),
    "done": _key_op(r"""
local task_id, ttl_ms = ARGV[4], ARGV[5]
if not rec or rec.tid ~= task_id then return {'ok', epoch, '0'} end
rec.st = 'done'
save(rec, ttl_ms)
return {'ok', epoch, '1'}
"""),
}

#: Reads one record (KEYS[1]) in either encoding: ``{state, task id, request}``, or an
#: empty list when the key is gone (the listing of unfinished keys reads them with it).
READ: Final = r"""
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'hash' then
  local r = redis.call('HMGET', KEYS[1], 'st', 'tid', 'rq')
  return {r[1] or '', r[2] or '', r[3] or 'null'}
elseif kind == 'string' then
  local v = cjson.decode(redis.call('GET', KEYS[1]))
  return {v[1], v[3], v[6] or 'null'}
end
return {}
"""
