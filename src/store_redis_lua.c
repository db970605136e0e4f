/* store_redis_lua.c: the Lua script every Redis write and query of the
 * Redis store runs (CLUSTER.md), as one script whose first argument names
 * the operation: EVALSHA <sha> 0 <op> <args...>. Running as a script makes
 * each operation atomic: a run is installed, fenced or ended in one step,
 * whatever the other nodes do at the same time. Time is only ever Redis's
 * TIME: node clocks are never compared.
 *
 * Keys (S = "db/app/user/session", also a Redis Cluster hash tag; the
 * database number keeps channels apart, pub/sub has no databases):
 *   rc:{S}:m  HASH    epoch, seq, run_start, app, user, sid, and the current
 *                     run: run, state, owner, k (its owner's last append
 *                     number), created, started, ended, events
 *   rc:{S}:l  STREAM  entry <seq>-0: f (flag: s run start, t terminal, -),
 *                     t (type), r (run id or ""), d (data, JSON)
 *   rc:{S}:c  channel "<epoch>|<seq>|<flag>|<type>|<run>|<data>"
 *   rc:{S}:s  HASH    node -> subscribers it serves
 *   rc:{S}:t  STRING  the epoch of a deleted session (its tombstone)
 *   rc:nodes  ZSET    node -> lease deadline (ms, Redis time)
 *   rc:n:<node>       SET of S where node owns the active run
 *   rc:sessions       ZSET S -> last activity (ms): expiry, ?all=1
 *   rc:active         ZSET S -> start (ms) of sessions with an active run
 *   rc:u:<user>:r     SET of S with an active run of user (--max-runs-per-user)
 *   rc:u:<user>:s     SET of S of user (--max-sessions-per-user)
 *   rc:tick           the Redis time of the latest tick (stall credit)
 *
 * Keys are built inside the script from S, so it runs on one Redis server
 * (not Redis Cluster, whose scripts must name their keys up front).
 * Replies are arrays whose first element is a status word. */
#include "store_redis.h"

const char store_redis_lua[] =
    "local A = ARGV\n"
    "local function K(S, s) return 'rc:{' .. S .. '}:' .. s end\n"
    "local ACTIVE = {queued = true, running = true}\n"
    /* Redis's clock, in ms, read once and only when needed. */
    "local now_ms\n"
    "local function now()\n"
    "  if not now_ms then\n"
    "    local t = redis.call('TIME')\n"
    "    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "  end\n"
    "  return now_ms\n"
    "end\n"
    "local function secs() return string.format('%.3f', now() / 1000) end\n"
    /* Puts event seq into S's stream and on its channel. */
    "local function emit(S, epoch, seq, flag, typ, run, data, maxlen)\n"
    "  redis.call('XADD', K(S, 'l'), 'MAXLEN', '~', maxlen, seq .. '-0', 'f', flag, 't', typ,\n"
    "             'r', run, 'd', data)\n"
    "  redis.call('PUBLISH', K(S, 'c'), epoch .. '|' .. seq .. '|' .. flag .. '|' .. typ .. '|' ..\n"
    "             run .. '|' .. data)\n"
    "end\n"
    /* Appends one event to S's log; returns its seq. */
    "local function add(S, epoch, flag, typ, run, data, maxlen)\n"
    "  local m = K(S, 'm')\n"
    "  local seq = redis.call('HINCRBY', m, 'seq', 1)\n"
    "  emit(S, epoch, seq, flag, typ, run, data, maxlen)\n"
    "  if flag == 's' then redis.call('HSET', m, 'run_start', seq) end\n"
    "  return seq\n"
    "end\n"
    /* Marks S active now and pushes its keys' expiry out (a safety net: the
     * ticks expire sessions at --session-ttl). */
    "local function keep(S, ttl)\n"
    "  redis.call('ZADD', 'rc:sessions', now(), S)\n"
    "  if ttl > 0 then\n"
    "    for _, s in ipairs({'m', 'l', 's'}) do redis.call('PEXPIRE', K(S, s), 2 * ttl + 60000) end\n"
    "  end\n"
    "end\n"
    "local function create(S, user, app, sid, epoch)\n"
    "  redis.call('HSET', K(S, 'm'), 'epoch', epoch, 'seq', 0, 'run_start', 0, 'app', app,\n"
    "             'user', user, 'sid', sid, 'run', '', 'state', '')\n"
    "  redis.call('SADD', 'rc:u:' .. user .. ':s', S)\n"
    "end\n"
    /* The current run of S just got its terminal event (state: its name). */
    "local function release(S, state)\n"
    "  local m = K(S, 'm')\n"
    "  local owner, user = unpack(redis.call('HMGET', m, 'owner', 'user'))\n"
    "  redis.call('HSET', m, 'state', state, 'ended', secs())\n"
    "  if owner then redis.call('SREM', 'rc:n:' .. owner, S) end\n"
    "  redis.call('SREM', 'rc:u:' .. user .. ':r', S)\n"
    "  redis.call('ZREM', 'rc:active', S)\n"
    "end\n"
    /* Ends S's active run with run.failed code (only if node owns it, when
     * node is given); returns the run id or nil. */
    "local function fail_active(S, code, message, maxlen, node)\n"
    "  local epoch, run, st, owner = unpack(redis.call('HMGET', K(S, 'm'), 'epoch', 'run', 'state',\n"
    "                                                  'owner'))\n"
    "  if not (epoch and ACTIVE[st]) or (node and owner ~= node) then return nil end\n"
    "  add(S, epoch, 't', 'run.failed', run, '{\"code\":\"' .. code .. '\",\"message\":\"' ..\n"
    "      message .. '\",\"run_id\":\"' .. run .. '\"}', maxlen)\n"
    "  release(S, 'failed')\n"
    "  return run\n"
    "end\n"
    "local function cancel_active(S, reason, maxlen)\n"
    "  local epoch, run, st = unpack(redis.call('HMGET', K(S, 'm'), 'epoch', 'run', 'state'))\n"
    "  if not (epoch and ACTIVE[st]) then return nil end\n"
    "  add(S, epoch, 't', 'run.cancelled', run, '{\"reason\":\"' .. reason .. '\",\"run_id\":\"' ..\n"
    "      run .. '\"}', maxlen)\n"
    "  release(S, 'cancelled')\n"
    "  return run\n"
    "end\n"
    /* Ends S (delete, expiry): session.closed, then its keys go. */
    "local function close(S, reason, maxlen, tomb_ms)\n"
    "  local m = K(S, 'm')\n"
    "  local epoch, user = unpack(redis.call('HMGET', m, 'epoch', 'user'))\n"
    "  add(S, epoch, '-', 'session.closed', '', '{\"reason\":\"' .. reason .. '\"}', maxlen)\n"
    "  if tomb_ms > 0 then redis.call('SET', K(S, 't'), epoch, 'PX', tomb_ms) end\n"
    "  redis.call('DEL', m, K(S, 'l'), K(S, 's'))\n"
    "  redis.call('ZREM', 'rc:sessions', S)\n"
    "  redis.call('SREM', 'rc:u:' .. user .. ':s', S)\n"
    "end\n"
    /* Subscribers of S on nodes whose lease holds, but for node `except`
     * (the asking node counts its own, exactly). */
    "local function live_subscribers(S, except)\n"
    "  local h = redis.call('HGETALL', K(S, 's'))\n"
    "  local n = 0\n"
    "  for i = 1, #h, 2 do\n"
    "    local lease = redis.call('ZSCORE', 'rc:nodes', h[i])\n"
    "    if h[i] ~= except and lease and tonumber(lease) >= now() then n = n + tonumber(h[i + 1]) end\n"
    "  end\n"
    "  return n\n"
    "end\n"
    /* S's task status fields; the last is the subscribers of other nodes. */
    "local function status(S, except)\n"
    "  local f = redis.call('HMGET', K(S, 'm'), 'app', 'user', 'sid', 'run', 'state', 'created',\n"
    "                       'started', 'ended', 'events')\n"
    "  for i = 1, 9 do f[i] = f[i] or '' end\n"
    "  f[10] = live_subscribers(S, except)\n"
    "  f[11] = S\n"
    "  return f\n"
    "end\n"
    "local op = A[1]\n"

    /* open S user app sid epoch create mirror_epoch after history
     *      max_user_sessions ttl maxlen
     * The mirror's (re)load: creates S if asked; the retained events after
     * `after` when mirror_epoch is still S's epoch, else all of them. A log
     * rolled back below what the mirror already had (a Redis restart or
     * failover that lost writes) gets a new epoch, so that clients' ids of
     * the lost events are foreign (stream.reset), and its active run fails
     * store_lost. -> OK epoch seq run_start entries | NOMETA | EDQUOT */
    "if op == 'open' then\n"
    "  local S, m = A[2], K(A[2], 'm')\n"
    "  local epoch = redis.call('HGET', m, 'epoch')\n"
    "  if not epoch then\n"
    "    if A[7] ~= '1' then return {'NOMETA'} end\n"
    "    local cap = tonumber(A[11])\n"
    "    if cap > 0 and redis.call('SCARD', 'rc:u:' .. A[3] .. ':s') >= cap then return {'EDQUOT'} end\n"
    "    epoch = A[6]\n"
    "    create(S, A[3], A[4], A[5], epoch)\n"
    "    keep(S, tonumber(A[12]))\n"
    "  end\n"
    "  local seq, after = tonumber(redis.call('HGET', m, 'seq')), tonumber(A[9])\n"
    "  if epoch == A[8] and seq < after then\n"
    "    epoch = A[6]\n"
    "    redis.call('HSET', m, 'epoch', epoch)\n"
    "    fail_active(S, 'store_lost', 'the store lost events of this run (Redis restarted or failed over)',\n"
    "                tonumber(A[13]))\n"
    "    seq = tonumber(redis.call('HGET', m, 'seq'))\n"
    "    after = 0\n"
    "  elseif epoch ~= A[8] then\n"
    "    after = 0\n"
    "  end\n"
    "  local hist = tonumber(A[10])\n"
    "  local from = math.max(after + 1, seq - hist + 1, 1)\n"
    "  return {'OK', epoch, seq, tonumber(redis.call('HGET', m, 'run_start')),\n"
    "          redis.call('XRANGE', K(S, 'l'), from, '+', 'COUNT', hist)}\n"

    /* start S user app sid node run epoch type data max_user_runs
     *       max_user_sessions ttl maxlen
     * Installs run as S's current run: the active one, if any, first gets
     * its run.superseded; over max_user_runs the new run's first event is
     * run.failed rate_limited instead of the one given.
     * -> OK|REFUSED epoch seq superseded_run | DUP epoch | EDQUOT */
    "elseif op == 'start' then\n"
    "  local S, m, user, node, run = A[2], K(A[2], 'm'), A[3], A[6], A[7]\n"
    "  local maxlen = tonumber(A[14])\n"
    "  local epoch = redis.call('HGET', m, 'epoch')\n"
    "  if not epoch then\n"
    "    local cap = tonumber(A[12])\n"
    "    if cap > 0 and redis.call('SCARD', 'rc:u:' .. user .. ':s') >= cap then return {'EDQUOT'} end\n"
    "    epoch = A[8]\n"
    "    create(S, user, A[4], A[5], epoch)\n"
    "  end\n"
    "  local cur, st = unpack(redis.call('HMGET', m, 'run', 'state'))\n"
    "  if cur == run then return {'DUP', epoch} end\n"
    "  local superseded = ''\n"
    "  if ACTIVE[st] then\n"
    "    add(S, epoch, 't', 'run.superseded', cur, '{\"by\":\"' .. run .. '\",\"run_id\":\"' .. cur ..\n"
    "        '\"}', maxlen)\n"
    "    release(S, 'superseded')\n"
    "    superseded = cur\n"
    "  end\n"
    "  local status, typ, data = 'OK', A[9], A[10]\n"
    "  local ur = 'rc:u:' .. user .. ':r'\n"
    "  local cap = tonumber(A[11])\n"
    "  if typ ~= 'run.failed' and cap > 0 and redis.call('SCARD', ur) >= cap then\n"
    "    status, typ = 'REFUSED', 'run.failed'\n"
    "    data = '{\"code\":\"rate_limited\",\"message\":\"this user already has --max-runs-per-user ' ..\n"
    "           'active runs\",\"run_id\":\"' .. run .. '\"}'\n"
    "  end\n"
    "  local state = ({['run.started'] = 'running', ['run.queued'] = 'queued'})[typ] or 'failed'\n"
    "  local d = cjson.decode(data)\n"
    "  redis.call('HSET', m, 'run', run, 'state', state, 'owner', node, 'k', 0, 'events', 0,\n"
    "             'created', d.created_at and string.format('%.6f', d.created_at) or secs(),\n"
    "             'started', d.started_at and string.format('%.6f', d.started_at) or '',\n"
    "             'ended', '')\n"
    "  local seq = add(S, epoch, 's', typ, run, data, maxlen)\n"
    "  if ACTIVE[state] then\n"
    "    redis.call('SADD', 'rc:n:' .. node, S)\n"
    "    redis.call('SADD', ur, S)\n"
    "    redis.call('ZADD', 'rc:active', now(), S)\n"
    "  else\n"
    "    redis.call('HSET', m, 'ended', secs())\n"
    "  end\n"
    "  keep(S, tonumber(A[13]))\n"
    "  return {status, epoch, seq, superseded}\n"

    /* append S run k flag type data ttl maxlen [lost: epoch node user app sid]
     * The run's owner writes an event of it: only while run is S's
     * current, active run, and once per k (a retried append is a DUP).
     * With the lost arguments (run.failed store_lost) it writes where the
     * run's events were lost: S is re-created if it is gone, and the event
     * becomes the start of the run there.
     * -> OK epoch seq | DUP epoch | FENCED epoch ended_event | NOMETA */
    "elseif op == 'append' then\n"
    "  local S, m, run, flag, typ, data = A[2], K(A[2], 'm'), A[3], A[5], A[6], A[7]\n"
    "  local ttl, maxlen = tonumber(A[8]), tonumber(A[9])\n"
    "  local epoch, cur, st, k, seq, events = unpack(redis.call('HMGET', m, 'epoch', 'run', 'state',\n"
    "                                                           'k', 'seq', 'events'))\n"
    "  if A[10] then\n"
    "    if not epoch then\n"
    "      epoch, cur = A[10], ''\n"
    "      create(S, A[12], A[13], A[14], epoch)\n"
    "    end\n"
    "    if cur == '' then\n"
    "      redis.call('HSET', m, 'run', run, 'state', 'failed', 'owner', A[11], 'k', A[4],\n"
    "                 'events', 0, 'created', secs(), 'started', '', 'ended', secs())\n"
    "      local seq = add(S, epoch, 's', typ, run, data, maxlen)\n"
    "      keep(S, ttl)\n"
    "      return {'OK', epoch, seq}\n"
    "    end\n"
    "  end\n"
    "  if not epoch then return {'NOMETA'} end\n"
    "  if cur ~= run then return {'FENCED', epoch, 'run.superseded'} end\n"
    "  if tonumber(A[4]) <= tonumber(k) then return {'DUP', epoch} end\n"
    "  if not ACTIVE[st] then return {'FENCED', epoch, 'run.' .. st} end\n"
    /* The hot path (an agent event): one HMGET, one HSET, XADD, PUBLISH. */
    "  seq = tonumber(seq) + 1\n"
    "  if typ == 'agent.event' then\n"
    "    redis.call('HSET', m, 'k', A[4], 'seq', seq, 'events', tonumber(events) + 1)\n"
    "  elseif typ == 'run.started' then\n"
    "    local d = cjson.decode(data)\n"
    "    redis.call('HSET', m, 'k', A[4], 'seq', seq, 'state', 'running', 'started',\n"
    "               d.started_at and string.format('%.6f', d.started_at) or secs())\n"
    "  else\n"
    "    redis.call('HSET', m, 'k', A[4], 'seq', seq)\n"
    "  end\n"
    "  emit(S, epoch, seq, flag, typ, run, data, maxlen)\n"
    "  if flag == 't' then release(S, string.sub(typ, 5)) end\n"
    /* Activity and key expiry are refreshed at a run's steps and every
     * 32nd event: minutes-long TTLs do not need more. */
    "  if flag ~= '-' or seq % 32 == 0 then keep(S, ttl) end\n"
    "  return {'OK', epoch, seq}\n"

    /* cancel S reason ttl maxlen -> OK run owner | NORUN | NOSESSION */
    "elseif op == 'cancel' then\n"
    "  local S = A[2]\n"
    "  local owner = redis.call('HGET', K(S, 'm'), 'owner')\n"
    "  if redis.call('EXISTS', K(S, 'm')) == 0 then return {'NOSESSION'} end\n"
    "  local run = cancel_active(S, A[3], tonumber(A[5]))\n"
    "  if not run then return {'NORUN'} end\n"
    "  keep(S, tonumber(A[4]))\n"
    "  return {'OK', run, owner}\n"

    /* delete S tomb_ms maxlen -> OK latest_run cancelled_run | NOSESSION */
    "elseif op == 'delete' then\n"
    "  local S = A[2]\n"
    "  local run = redis.call('HGET', K(S, 'm'), 'run')\n"
    "  if not run then return {'NOSESSION'} end\n"
    "  local cancelled = cancel_active(S, 'session_deleted', tonumber(A[4])) or ''\n"
    "  close(S, 'session_deleted', tonumber(A[4]), tonumber(A[3]))\n"
    "  return {'OK', run, cancelled}\n"

    /* tomb S epoch -> 1 when S is gone and epoch is its deleted incarnation */
    "elseif op == 'tomb' then\n"
    "  if redis.call('EXISTS', K(A[2], 'm')) == 0 and redis.call('GET', K(A[2], 't')) == A[3] then\n"
    "    return 1\n"
    "  end\n"
    "  return 0\n"

    /* user_subs user node -> the user's subscribers on other live nodes
     * (as of their latest tick) */
    "elseif op == 'user_subs' then\n"
    "  local n = 0\n"
    "  for _, S in ipairs(redis.call('SMEMBERS', 'rc:u:' .. A[2] .. ':s')) do\n"
    "    n = n + live_subscribers(S, A[3])\n"
    "  end\n"
    "  return n\n"

    /* status S node -> OK fields | NOSESSION */
    "elseif op == 'status' then\n"
    "  if redis.call('EXISTS', K(A[2], 'm')) == 0 then return {'NOSESSION'} end\n"
    "  return {'OK', status(A[2], A[3])}\n"

    /* status_all all limit node -> OK active running queued sessions list */
    "elseif op == 'status_all' then\n"
    "  local running, queued = 0, 0\n"
    "  local active = redis.call('ZRANGE', 'rc:active', 0, -1)\n"
    "  for _, S in ipairs(active) do\n"
    "    local st = redis.call('HGET', K(S, 'm'), 'state')\n"
    "    if st == 'running' then running = running + 1 elseif st == 'queued' then queued = queued + 1 end\n"
    "  end\n"
    "  local list = {}\n"
    "  local limit = tonumber(A[3])\n"
    "  if limit > 0 then\n"
    "    local from = A[2] == '1' and redis.call('ZRANGE', 'rc:sessions', 0, limit - 1) or\n"
    "                 redis.call('ZRANGE', 'rc:active', 0, limit - 1)\n"
    "    for _, S in ipairs(from) do table.insert(list, status(S, A[4])) end\n"
    "  end\n"
    "  return {'OK', #active, running, queued, redis.call('ZCARD', 'rc:sessions'), list}\n"

    /* tick node lease limit ttl stall maxlen probe
     *      nruns [S run epoch]... nsubs [S count]... nprobe [S epoch seq]...
     * Every node's periodic step: renews its lease; reports which of the
     * runs it runs are no longer its own (epoch "" = not yet confirmed);
     * ends runs Redis says it owns that it does not run; records its
     * subscriber counts; reports mirrored logs that moved on (a lost
     * message leaves no gap to notice); fails the runs of nodes whose lease
     * lapsed (node_lost); expires idle sessions; publishes on the node's
     * probe channel (is its pub/sub connection still delivering?). A Redis
     * stall longer than
     * `stall` (no tick from any node) extends every lease by its length, so
     * a paused Redis does not reap every node when it wakes.
     * -> {lost: S run event ...} {reaped: S run node ...} {probe: S ...}
     *    {expired: S cancelled_run_or_"" ...} */
    "elseif op == 'tick' then\n"
    "  local node, lease, limit = A[2], tonumber(A[3]), tonumber(A[4])\n"
    "  local ttl, stall, maxlen = tonumber(A[5]), tonumber(A[6]), tonumber(A[7])\n"
    "  local last = tonumber(redis.call('GET', 'rc:tick') or '0')\n"
    "  local now = now()\n"
    "  if last > 0 and now - last > stall then\n"
    "    local all = redis.call('ZRANGE', 'rc:nodes', 0, -1, 'WITHSCORES')\n"
    "    for i = 1, #all, 2 do\n"
    "      redis.call('ZADD', 'rc:nodes', tonumber(all[i + 1]) + now - last, all[i])\n"
    "    end\n"
    "  end\n"
    "  redis.call('SET', 'rc:tick', now)\n"
    "  redis.call('ZADD', 'rc:nodes', now + lease, node)\n"
    "  redis.call('PUBLISH', 'rc:probe:' .. A[8], now)\n"
    "  local i = 9\n"
    "  local lost, mine = {}, {}\n"
    "  for _ = 1, tonumber(A[i]) do\n"
    "    local S, run, ep = A[i + 1], A[i + 2], A[i + 3]\n"
    "    i = i + 3\n"
    "    local epoch, cur, st = unpack(redis.call('HMGET', K(S, 'm'), 'epoch', 'run', 'state'))\n"
    "    local ended = nil\n"
    "    if not epoch or (ep ~= '' and epoch ~= ep) then ended = ''\n"
    "    elseif cur ~= run then ended = 'run.superseded'\n"
    "    elseif not ACTIVE[st] then ended = 'run.' .. st end\n"
    "    if ended then\n"
    "      table.insert(lost, S); table.insert(lost, run); table.insert(lost, ended)\n"
    "    else\n"
    "      mine[S] = true\n"
    "      redis.call('SADD', 'rc:n:' .. node, S)\n"
    "    end\n"
    "  end\n"
    "  local reaped = {}\n"
    "  for _, S in ipairs(redis.call('SMEMBERS', 'rc:n:' .. node)) do\n"
    "    if not mine[S] then\n"
    "      local run = fail_active(S, 'node_lost', 'node ' .. node .. ' no longer runs it', maxlen, node)\n"
    "      if run then table.insert(reaped, S); table.insert(reaped, run); table.insert(reaped, node) end\n"
    "      redis.call('SREM', 'rc:n:' .. node, S)\n"
    "    end\n"
    "  end\n"
    "  i = i + 1\n"
    "  for _ = 1, tonumber(A[i]) do\n"
    "    local S, count = A[i + 1], tonumber(A[i + 2])\n"
    "    i = i + 2\n"
    "    if count > 0 then redis.call('HSET', K(S, 's'), node, count)\n"
    "    else redis.call('HDEL', K(S, 's'), node) end\n"
    "  end\n"
    "  i = i + 1\n"
    "  local probe = {}\n"
    "  for _ = 1, tonumber(A[i]) do\n"
    "    local S, ep, seq = A[i + 1], A[i + 2], A[i + 3]\n"
    "    i = i + 3\n"
    "    local epoch, s = unpack(redis.call('HMGET', K(S, 'm'), 'epoch', 'seq'))\n"
    "    if epoch ~= ep or s ~= seq then table.insert(probe, S) end\n"
    "  end\n"
    "  local dead = redis.call('ZRANGEBYSCORE', 'rc:nodes', '-inf', '(' .. now, 'LIMIT', 0, limit)\n"
    "  for _, d in ipairs(dead) do\n"
    "    for _, S in ipairs(redis.call('SMEMBERS', 'rc:n:' .. d)) do\n"
    "      local run = fail_active(S, 'node_lost', 'node ' .. d .. ' stopped renewing its lease',\n"
    "                              maxlen, d)\n"
    "      if run then table.insert(reaped, S); table.insert(reaped, run); table.insert(reaped, d) end\n"
    "    end\n"
    "    redis.call('DEL', 'rc:n:' .. d)\n"
    "    redis.call('ZREM', 'rc:nodes', d)\n"
    "  end\n"
    "  local expired = {}\n"
    "  if ttl > 0 then\n"
    "    for _, S in ipairs(redis.call('ZRANGEBYSCORE', 'rc:sessions', '-inf', '(' .. (now - ttl),\n"
    "                                  'LIMIT', 0, limit)) do\n"
    "      if live_subscribers(S, '') > 0 or redis.call('EXISTS', K(S, 'm')) == 0 then\n"
    "        keep(S, ttl)\n"
    "        if redis.call('EXISTS', K(S, 'm')) == 0 then redis.call('ZREM', 'rc:sessions', S) end\n"
    "      else\n"
    "        table.insert(expired, S)\n"
    "        table.insert(expired, cancel_active(S, 'session_expired', maxlen) or '')\n"
    "        close(S, 'session_expired', maxlen, 0)\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  return {lost, reaped, probe, expired}\n"
    "end\n"
    "return redis.error_reply('unknown op ' .. tostring(op))\n";
