"""Where a cluster keeps its state in Redis, and the scripts that change it atomically.

Keys carry hash tags, so that on a Redis Cluster they spread over the slots
and each script touches one slot only:

- ``socketlab:{NAME}:...`` -- the cluster's own facts, in one slot: settings,
  epoch, user numbers, names, members, the room index, heartbeats.
- ``socketlab:{NAME:r:ROOM}:...`` -- one room: its members in joining order,
  their names, a short log of its events, and its channel (sharded Pub/Sub).
- ``socketlab:{NAME:s:SERVER}:...`` -- one server: its members (for whoever
  cleans up after it) and its channel for private messages.

A room's script changes the room and publishes the event on the room's
channel in one step, so the channel's order is the room's order.
"""

from __future__ import annotations

from dataclasses import dataclass

#: How long (ms) a room's log keeps its events: a server whose subscription broke for less fills the gap.
LOG_KEEP_MS = 30_000

ROOM = """
-- KEYS: 1 members (zset: id -> joining order), 2 names (hash: id -> name), 3 state (hash), 4 log (stream)
-- ARGV: 1 channel, 2 op, 3 server, 4 seq (0: no duplicate check), 5 id, 6 name, 7 argument, 8 batch, 9 keep ms
local op, id = ARGV[2], ARGV[5]
local seq = tonumber(ARGV[4])
if op == 'say' then  -- the hot path: a burst of lines, no question about members
  if seq <= tonumber(redis.call('HGET', KEYS[3], 'seq:' .. ARGV[3]) or '0') then return {'dup', 0, 0, '0-0'} end
  redis.call('HSET', KEYS[3], 'seq:' .. ARGV[3], seq)
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local version = redis.call('XADD', KEYS[4], 'MINID', '~', ms - tonumber(ARGV[9]), '*', 'b', ARGV[8])
  redis.call('SPUBLISH', ARGV[1], version .. ' ' .. ARGV[8])
  return {'ok', 0, 0, version}
end
local count = redis.call('ZCARD', KEYS[1])
if op == 'seat' then  -- arrivals in the lobby (no cap): ARGV[8] is [[id, name], ...]; one batch of events
  local events, results = {}, {}
  for _, arrival in ipairs(cjson.decode(ARGV[8])) do
    if redis.call('ZSCORE', KEYS[1], arrival[1]) then
      table.insert(results, 'same')
    else
      redis.call('ZADD', KEYS[1], redis.call('HINCRBY', KEYS[3], 'order', 1), arrival[1])
      redis.call('HSET', KEYS[2], arrival[1], arrival[2])
      table.insert(events, {'joined', arrival[1], arrival[2], count, 1})
      count = count + 1
      table.insert(results, 'ok')
    end
  end
  if #events > 0 then
    local now = redis.call('TIME')
    local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    local batch = cjson.encode(events) .. '\\n'
    local version = redis.call('XADD', KEYS[4], 'MINID', '~', ms - tonumber(ARGV[9]), '*', 'b', batch)
    redis.call('HSET', KEYS[3], 'version', version)
    redis.call('SPUBLISH', ARGV[1], version .. ' ' .. batch)
    redis.call('PERSIST', KEYS[3])
    redis.call('PERSIST', KEYS[4])
  end
  return {'seated', count, unpack(results)}
end
if op == 'who' then
  local first = tonumber(ARGV[7])
  local ids = redis.call('ZRANGE', KEYS[1], first, first + tonumber(ARGV[6]) - 1)
  local reply = {'who', count}
  if #ids > 0 then
    for _, name in ipairs(redis.call('HMGET', KEYS[2], unpack(ids))) do table.insert(reply, name or '?') end
  end
  return reply
end
local member = redis.call('ZSCORE', KEYS[1], id) and 1 or 0
if seq > 0 then
  if seq <= tonumber(redis.call('HGET', KEYS[3], 'seq:' .. ARGV[3]) or '0') then
    return {'dup', count, member, redis.call('HGET', KEYS[3], 'version') or '0-0'}
  end
  redis.call('HSET', KEYS[3], 'seq:' .. ARGV[3], seq)
end
local header
if op == 'join' or op == 'restore' then
  if member == 1 then return {'same', count, 1, redis.call('HGET', KEYS[3], 'version') or '0-0'} end
  local cap = tonumber(ARGV[7])
  if op == 'join' and cap > 0 and count >= cap then return {'full', count, 0, ''} end
  redis.call('ZADD', KEYS[1], redis.call('HINCRBY', KEYS[3], 'order', 1), id)
  redis.call('HSET', KEYS[2], id, ARGV[6])
  redis.call('PERSIST', KEYS[3])
  redis.call('PERSIST', KEYS[4])
  member = 1
  count = count + 1
  if op == 'join' then header = cjson.encode({{'joined', id, ARGV[6], count - 1, tonumber(ARGV[8])}}) end
elseif op == 'leave' then
  if member == 0 then return {'absent', count, 0, redis.call('HGET', KEYS[3], 'version') or '0-0'} end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  member = 0
  count = count - 1
  header = cjson.encode({{'left', id, ARGV[6], count, ARGV[7]}})
elseif op == 'rename' then
  if member == 0 then return {'absent', count, 0, ''} end
  redis.call('HSET', KEYS[2], id, ARGV[6])
  header = cjson.encode({{'renamed', id, ARGV[7], ARGV[6]}})
else
  return redis.error_reply('unknown room operation ' .. op)
end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local batch = header and (header .. '\\n')
local version = ms .. '-0'
if batch then
  version = redis.call('XADD', KEYS[4], 'MINID', '~', ms - tonumber(ARGV[9]), '*', 'b', batch)
  redis.call('HSET', KEYS[3], 'version', version)
  redis.call('SPUBLISH', ARGV[1], version .. ' ' .. batch)
end
if count == 0 then
  redis.call('PEXPIRE', KEYS[3], 86400000)
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[9]))
end
return {'ok', count, member, version}
"""

CONNECT = """
-- KEYS: 1 numbers, 2 names (hash: name key -> id), 3 members (hash: id -> [number, name, name key])
-- ARGV: 1 id, 2 number (0: the next), 3 name ('': user<number>), 4 its name key
local known = redis.call('HGET', KEYS[3], ARGV[1])
if known then return known end
local number = tonumber(ARGV[2])
if number == 0 then
  number = redis.call('INCR', KEYS[1])
elseif tonumber(redis.call('GET', KEYS[1]) or '0') < number then
  redis.call('SET', KEYS[1], number)
end
local name, key = ARGV[3], ARGV[4]
if name == '' then name = 'user' .. number; key = name end
while redis.call('HEXISTS', KEYS[2], key) == 1 do name = name .. '_'; key = key .. '_' end
redis.call('HSET', KEYS[2], key, ARGV[1])
local entry = cjson.encode({number, name, key})
redis.call('HSET', KEYS[3], ARGV[1], entry)
return entry
"""

RENAME = """
-- KEYS: 1 names, 2 members; ARGV: 1 id, 2 new name, 3 its name key
local entry = redis.call('HGET', KEYS[2], ARGV[1])
if not entry then return 'gone' end
local member = cjson.decode(entry)
local owner = redis.call('HGET', KEYS[1], ARGV[3])
if owner and owner ~= ARGV[1] then return 'taken' end
if member[3] ~= ARGV[3] and redis.call('HGET', KEYS[1], member[3]) == ARGV[1] then redis.call('HDEL', KEYS[1], member[3]) end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode({member[1], ARGV[2], ARGV[3]}))
return 'ok'
"""

RELEASE = """
-- KEYS: 1 names, 2 members; ARGV: 1 id
local entry = redis.call('HGET', KEYS[2], ARGV[1])
if not entry then return 0 end
local key = cjson.decode(entry)[3]
if redis.call('HGET', KEYS[1], key) == ARGV[1] then redis.call('HDEL', KEYS[1], key) end
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

LOOKUP = """
-- KEYS: 1 names, 2 members; ARGV: 1 name key. Returns {id, [number, name, key]} or {}
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return {} end
local entry = redis.call('HGET', KEYS[2], id)
if not entry then return {} end
return {id, entry}
"""

INDEX = """
-- KEYS: 1 index (zset of room names, all scored 0: by name), 2 the room's version
-- ARGV: 1 room, 2 version (a stream id of the room's log), 3 '1' when it has members, 4 ms the version is kept
local function parse(v) local ms, seq = string.match(v, '^(%d+)-(%d+)$'); return tonumber(ms or 0), tonumber(seq or 0) end
local old = redis.call('GET', KEYS[2])
if old then
  local oms, oseq = parse(old)
  local nms, nseq = parse(ARGV[2])
  if nms < oms or (nms == oms and nseq <= oseq) then return 0 end
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', tonumber(ARGV[4]))
if ARGV[3] == '1' or ARGV[1] == 'lobby' then redis.call('ZADD', KEYS[1], 0, ARGV[1]) else redis.call('ZREM', KEYS[1], ARGV[1]) end
return 1
"""

BEAT = """
-- KEYS: 1 heartbeats (hash: server -> ms), 2 this server's lost mark, 3 epoch, 4 the heartbeats' clock
-- ARGV: 1 server, 2 ms a server may stay silent
-- A server is judged silent only while the others beat: after a pause of everyone's heartbeats (Redis
-- itself was away or frozen), nobody is judged until every server has had the time to beat again.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local alive = tonumber(ARGV[2])
local lost = redis.call('DEL', KEYS[2])
local clock = redis.call('HMGET', KEYS[4], 'last', 'judge')
local judge = tonumber(clock[2] or '0')
if ms - tonumber(clock[1] or '0') > alive then judge = ms + alive end
redis.call('HSET', KEYS[4], 'last', ms, 'judge', judge)
redis.call('HSET', KEYS[1], ARGV[1], ms)
local silent = {}
if ms >= judge then
  local beats = redis.call('HGETALL', KEYS[1])
  for i = 1, #beats, 2 do
    if ms - tonumber(beats[i + 1]) > alive then table.insert(silent, beats[i]) end
  end
end
return {lost, redis.call('GET', KEYS[3]) or '', silent}
"""

CLAIM = """
-- KEYS: 1 heartbeats, 2 the silent server's lost mark, 3 the heartbeats' clock
-- ARGV: 1 server, 2 ms a server may stay silent
-- Whoever gets 1 cleans up after the server; everyone else 0.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if ms < tonumber(redis.call('HGET', KEYS[3], 'judge') or '0') then return 0 end
local beat = redis.call('HGET', KEYS[1], ARGV[1])
if not beat or ms - tonumber(beat) <= tonumber(ARGV[2]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], '1', 'PX', 600000)
return 1
"""

PRIVATE = """
-- KEYS: 1 the receiving server's members (for the slot); ARGV: 1 its channel, 2 the batch
return redis.call('SPUBLISH', ARGV[1], '0-0 ' .. ARGV[2])
"""


@dataclass(frozen=True)
class Keys:
    """The names of a cluster's keys and channels (see the module's docstring)."""

    cluster: str

    def _own(self, name: str) -> str:
        return f"socketlab:{{{self.cluster}}}:{name}"

    @property
    def config(self) -> str:
        return self._own("config")

    @property
    def epoch(self) -> str:
        return self._own("epoch")

    @property
    def numbers(self) -> str:
        return self._own("numbers")

    @property
    def names(self) -> str:
        return self._own("names")

    @property
    def members(self) -> str:
        return self._own("members")

    @property
    def index(self) -> str:
        return self._own("rooms")

    @property
    def beats(self) -> str:
        return self._own("beats")

    @property
    def clock(self) -> str:
        return self._own("clock")

    @property
    def addresses(self) -> str:
        return self._own("addresses")

    def lost(self, server: str) -> str:
        return self._own(f"lost:{server}")

    def room_version(self, room: str) -> str:
        return self._own(f"version:{room}")

    def room(self, room: str) -> list[str]:
        """A room's keys, in the order ROOM takes them."""
        tag = f"socketlab:{{{self.cluster}:r:{room}}}:"
        return [tag + "members", tag + "names", tag + "state", tag + "log"]

    def room_channel(self, room: str) -> str:
        return f"socketlab:{{{self.cluster}:r:{room}}}:channel"

    def server_members(self, server: str) -> str:
        return f"socketlab:{{{self.cluster}:s:{server}}}:members"

    def server_channel(self, server: str) -> str:
        return f"socketlab:{{{self.cluster}:s:{server}}}:channel"
