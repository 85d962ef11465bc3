package presence

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisTracker is the cluster Tracker: every node of a cluster points it at
// one Redis (7.0 or later; standalone or a primary with replicas, not Redis
// Cluster: the scripts compute key names). Layout, under Prefix:
//
//	P:conns        HASH  conn -> entry JSON
//	P:exp          ZSET  conn -> expiry (unix ms); what Sweep walks
//	P:idx          ZSET  "user\x00conn", score 0; the (user, conn) order of Online
//	P:users        ZSET  online user, score 0; P:ucnt HASH user -> entries
//	P:cnt          HASH  "p:<platform>", "v:<appVersion>", "pv:<p>\x00<v>" -> entries
//	P:u:<user>     SET   the user's conns;  P:d:<device> SET the device id's conns
//	P:n:<inst>     SET   a node instance's conns; P:nodes ZSET inst -> expiry
//	P:cr:<conn>    SET   the rooms of a conn;     P:r:<room> HASH conn -> member JSON
//	P:last:<user>  HASH  device -> "<ended ms>|<entry JSON>" (Recent)
//	P:t:<room>\x00<user>  string with PX: the typing throttle
//
// Redis 7.0 has no per-field expiry (HEXPIRE is 7.4), so an entry's expiry
// lives in P:exp, as Centrifugo does it; every write of an entry and its
// indexes is one Lua script, so the indexes and counters never disagree
// with P:conns. Every key also has a PEXPIRE backstop (KeyTTL, refreshed by
// the writes), so a cluster that is shut down leaves nothing behind.
type RedisTracker struct {
	rdb  *redis.Client
	opts Options
	p    string        // key prefix
	kttl time.Duration // key backstop
}

// RedisTrackerConfig configures NewRedisTracker.
type RedisTrackerConfig struct {
	Addr     string // host:port; required
	Password string
	DB       int
	// Prefix starts every key; nodes of one cluster share it. Default
	// "syncgate"; keys are "<Prefix>:presence:…".
	Prefix string
	// Options holds the TTLs and the clock.
	Options Options
}

var _ Tracker = (*RedisTracker)(nil)

// NewRedisTracker connects lazily (the first command dials).
func NewRedisTracker(cfg RedisTrackerConfig) (*RedisTracker, error) {
	if cfg.Addr == "" {
		return nil, errors.New("presence: RedisTrackerConfig.Addr is required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "syncgate"
	}
	o := cfg.Options.withDefaults()
	rdb := redis.NewClient(&redis.Options{
		Addr: cfg.Addr, Password: cfg.Password, DB: cfg.DB,
		DialTimeout: 5 * time.Second, ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second,
		// Presence commands are small: a pool of 8 per node is plenty
		// (heartbeats are batched, one script per 256 entries).
		PoolSize: 8,
	})
	return &RedisTracker{rdb: rdb, opts: o, p: cfg.Prefix + ":presence", kttl: max(10*o.TTL, time.Hour)}, nil
}

// Close releases the connections.
func (t *RedisTracker) Close(context.Context) error { return t.rdb.Close() }

// Ping checks that Redis answers.
func (t *RedisTracker) Ping(ctx context.Context) error { return t.rdb.Ping(ctx).Err() }

func ms(t time.Time) int64 { return t.UnixMilli() }

// removeLua removes one entry with its indexes, counters and memberships,
// and records its last record. It returns nil if the entry is gone, else
// {entry JSON, room...}. ended: the end time to record (ms); <0 means
// "the entry's last refresh" (its expiry minus ttl).
const removeLua = `
local function remove(p, conn, ended, ttl, rttl)
  local js = redis.call('HGET', p..':conns', conn)
  local exp = redis.call('ZSCORE', p..':exp', conn)
  redis.call('ZREM', p..':exp', conn)
  if not js then return nil end
  local d = cjson.decode(js)
  local user, dev, inst = d.user, d.device, d.instance
  local plat, app = d.platform or '', d.appVersion or ''
  redis.call('HDEL', p..':conns', conn)
  redis.call('ZREM', p..':idx', user..'\0'..conn)
  redis.call('SREM', p..':u:'..user, conn)
  redis.call('SREM', p..':d:'..dev, conn)
  redis.call('SREM', p..':n:'..inst, conn)
  if redis.call('HINCRBY', p..':ucnt', user, -1) <= 0 then
    redis.call('HDEL', p..':ucnt', user)
    redis.call('ZREM', p..':users', user)
  end
  for _, f in ipairs({'p:'..plat, 'v:'..app, 'pv:'..plat..'\0'..app}) do
    if redis.call('HINCRBY', p..':cnt', f, -1) <= 0 then redis.call('HDEL', p..':cnt', f) end
  end
  local rooms = redis.call('SMEMBERS', p..':cr:'..conn)
  for _, r in ipairs(rooms) do redis.call('HDEL', p..':r:'..r, conn) end
  redis.call('DEL', p..':cr:'..conn)
  if ended < 0 then
    ended = exp and (tonumber(exp) - ttl) or 0
  end
  redis.call('HSET', p..':last:'..user, dev, tostring(ended)..'|'..js)
  redis.call('PEXPIRE', p..':last:'..user, rttl)
  local out = {js}
  for _, r in ipairs(rooms) do table.insert(out, r) end
  return out
end
`

// backstopLua refreshes the PEXPIRE backstop of the global keys.
const backstopLua = `
local function backstop(p, kttl)
  for _, k in ipairs({':conns', ':exp', ':idx', ':users', ':ucnt', ':cnt', ':nodes'}) do
    redis.call('PEXPIRE', p..k, kttl)
  end
end
`

var (
	// ARGV: prefix, conn, user, device, inst, platform, app, json, expiry, kttl
	connectScript = redis.NewScript(backstopLua + `
local p, conn, user, dev, inst, plat, app, js, exp, kttl =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local fresh = redis.call('HSETNX', p..':conns', conn, js)
if fresh == 0 then redis.call('HSET', p..':conns', conn, js) end
redis.call('ZADD', p..':exp', exp, conn)
if fresh == 1 then
  redis.call('ZADD', p..':idx', 0, user..'\0'..conn)
  for _, k in ipairs({':u:'..user, ':d:'..dev, ':n:'..inst}) do
    redis.call('SADD', p..k, conn)
    redis.call('PEXPIRE', p..k, kttl)
  end
  if redis.call('HINCRBY', p..':ucnt', user, 1) == 1 then redis.call('ZADD', p..':users', 0, user) end
  for _, f in ipairs({'p:'..plat, 'v:'..app, 'pv:'..plat..'\0'..app}) do
    redis.call('HINCRBY', p..':cnt', f, 1)
  end
end
backstop(p, kttl)
return fresh
`)

	// ARGV: prefix, expiry, kttl, then (conn, user, device, inst, json)
	// per entry. Returns the conns that are gone. Each index key's
	// backstop is renewed once per script, not once per entry (10,000
	// entries of one node share one node set).
	refreshScript = redis.NewScript(backstopLua + `
local p, exp, kttl = ARGV[1], ARGV[2], ARGV[3]
local missing, renewed = {}, {}
local function renew(k)
  if not renewed[k] then
    renewed[k] = true
    redis.call('PEXPIRE', k, kttl)
  end
end
for i = 4, #ARGV, 5 do
  local conn, user, dev, inst, js = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  if redis.call('HEXISTS', p..':conns', conn) == 1 then
    redis.call('HSET', p..':conns', conn, js)
    redis.call('ZADD', p..':exp', exp, conn)
    renew(p..':u:'..user)
    renew(p..':d:'..dev)
    renew(p..':n:'..inst)
    local rooms = redis.call('SMEMBERS', p..':cr:'..conn)
    if #rooms > 0 then
      redis.call('PEXPIRE', p..':cr:'..conn, kttl)
      for _, r in ipairs(rooms) do renew(p..':r:'..r) end
    end
  else
    table.insert(missing, conn)
  end
end
backstop(p, kttl)
return missing
`)

	// ARGV: prefix, conn, now, ttl, rttl
	disconnectScript = redis.NewScript(removeLua + `
return remove(ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
`)

	// ARGV: prefix, now, ttl, rttl, limit. Returns a list of removal
	// results (see removeLua), expired node records first.
	sweepScript = redis.NewScript(removeLua + `
local p, now, ttl, rttl, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local gone = {}
-- A dead node's entries go at most limit per call, so that one script
-- never holds Redis for a whole node's worth of removals.
local budget = limit
for _, inst in ipairs(redis.call('ZRANGEBYSCORE', p..':nodes', '-inf', now, 'LIMIT', 0, 8)) do
  local set = p..':n:'..inst
  for _, conn in ipairs(redis.call('SRANDMEMBER', set, budget)) do
    local r = remove(p, conn, -1, ttl, rttl)
    redis.call('SREM', set, conn) -- also when the entry was already gone
    if r then table.insert(gone, r) end
    budget = budget - 1
  end
  if redis.call('SCARD', set) == 0 then
    redis.call('DEL', set)
    redis.call('ZREM', p..':nodes', inst)
  end
  if budget <= 0 then return gone end
end
for _, conn in ipairs(redis.call('ZRANGEBYSCORE', p..':exp', '-inf', now, 'LIMIT', 0, budget)) do
  local r = remove(p, conn, -1, ttl, rttl)
  if r then table.insert(gone, r) end
end
return gone
`)

	// ARGV: prefix, room, conn, json, now, kttl. 1: joined; 0: conn gone.
	joinScript = redis.NewScript(`
local p, room, conn, js, now, kttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local exp = redis.call('ZSCORE', p..':exp', conn)
if not exp or tonumber(exp) <= now then return 0 end
redis.call('HSET', p..':r:'..room, conn, js)
redis.call('SADD', p..':cr:'..conn, room)
redis.call('PEXPIRE', p..':r:'..room, kttl)
redis.call('PEXPIRE', p..':cr:'..conn, kttl)
return 1
`)

	// ARGV: prefix, room, conn, json. 1: replaced; 0: not a member.
	setMemberScript = redis.NewScript(`
local p, room, conn, js = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HEXISTS', p..':r:'..room, conn) == 0 then return 0 end
redis.call('HSET', p..':r:'..room, conn, js)
return 1
`)

	// ARGV: prefix, room, conn. 1: left; 0: was not a member.
	leaveScript = redis.NewScript(`
local p, room, conn = ARGV[1], ARGV[2], ARGV[3]
redis.call('SREM', p..':cr:'..conn, room)
return redis.call('HDEL', p..':r:'..room, conn)
`)
)

func (t *RedisTracker) err(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("presence: redis %s: %w", op, err)
}

func (t *RedisTracker) Connect(ctx context.Context, d Device) error {
	js, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("presence: encoding an entry: %w", err)
	}
	exp := ms(t.opts.Now().Add(t.opts.TTL))
	err = connectScript.Run(ctx, t.rdb, nil, t.p, d.Conn, d.User, d.Device, d.Instance, d.Platform, d.AppVersion,
		js, exp, t.kttl.Milliseconds()).Err()
	return t.err("connect", err)
}

// refreshBatch is how many entries one refresh script handles: 10,000
// devices take 40 scripts per heartbeat. Measured (BenchmarkHeartbeat10k)
// at about 2.5 ms of Redis CPU per script before the backstop renewals
// were deduplicated: a script holds Redis for a few milliseconds at most.
const refreshBatch = 256

func (t *RedisTracker) Refresh(ctx context.Context, ds []Device) ([]string, error) {
	exp := ms(t.opts.Now().Add(t.opts.TTL))
	var missing []string
	for chunk := range slices.Chunk(ds, refreshBatch) {
		args := make([]any, 0, 3+5*len(chunk))
		args = append(args, t.p, exp, t.kttl.Milliseconds())
		for _, d := range chunk {
			js, err := json.Marshal(d)
			if err != nil {
				return missing, fmt.Errorf("presence: encoding an entry: %w", err)
			}
			args = append(args, d.Conn, d.User, d.Device, d.Instance, js)
		}
		gone, err := refreshScript.Run(ctx, t.rdb, nil, args...).StringSlice()
		if err != nil && !errors.Is(err, redis.Nil) {
			return missing, t.err("refresh", err)
		}
		missing = append(missing, gone...)
	}
	return missing, nil
}

func (t *RedisTracker) RenewNode(ctx context.Context, inst string) error {
	_, err := t.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, t.p+":nodes", redis.Z{Score: float64(ms(t.opts.Now().Add(t.opts.TTL))), Member: inst})
		p.PExpire(ctx, t.p+":nodes", t.kttl)
		return nil
	})
	return t.err("renew node", err)
}

// parseGone decodes a removal result of removeLua.
func parseGone(v any) (Gone, bool, error) {
	parts, ok := v.([]any)
	if !ok || len(parts) == 0 {
		return Gone{}, false, nil
	}
	js, _ := parts[0].(string)
	var g Gone
	if err := json.Unmarshal([]byte(js), &g.Device); err != nil {
		return Gone{}, false, fmt.Errorf("presence: decoding an entry: %w", err)
	}
	for _, r := range parts[1:] {
		if s, ok := r.(string); ok {
			g.Rooms = append(g.Rooms, s)
		}
	}
	slices.Sort(g.Rooms)
	return g, true, nil
}

func (t *RedisTracker) Disconnect(ctx context.Context, conn string) (Gone, bool, error) {
	v, err := disconnectScript.Run(ctx, t.rdb, nil, t.p, conn, ms(t.opts.Now()), t.opts.TTL.Milliseconds(),
		t.opts.RecentTTL.Milliseconds()).Result()
	if errors.Is(err, redis.Nil) {
		return Gone{}, false, nil
	}
	if err != nil {
		return Gone{}, false, t.err("disconnect", err)
	}
	return parseGone(v)
}

// sweepBatch bounds the entries one sweep script removes (each removal is
// about 20 commands inside Redis); Sweep calls it until a call removes
// nothing.
const sweepBatch = 500

func (t *RedisTracker) Sweep(ctx context.Context) ([]Gone, error) {
	var out []Gone
	for {
		v, err := sweepScript.Run(ctx, t.rdb, nil, t.p, ms(t.opts.Now()), t.opts.TTL.Milliseconds(),
			t.opts.RecentTTL.Milliseconds(), sweepBatch).Slice()
		if err != nil && !errors.Is(err, redis.Nil) {
			return out, t.err("sweep", err)
		}
		for _, r := range v {
			g, ok, err := parseGone(r)
			if err != nil {
				return out, err
			}
			if ok {
				out = append(out, g)
			}
		}
		if len(v) == 0 {
			break
		}
	}
	slices.SortFunc(out, func(a, b Gone) int { return cmp.Compare(a.Device.Conn, b.Device.Conn) })
	return out, nil
}

// live loads the entries of conns that are visible now: present, not
// expired, and of a node instance whose record has not expired.
func (t *RedisTracker) live(ctx context.Context, conns []string) (map[string]Device, error) {
	out := make(map[string]Device, len(conns))
	if len(conns) == 0 {
		return out, nil
	}
	var (
		vals  *redis.SliceCmd
		exps  *redis.FloatSliceCmd
		nodes *redis.ZSliceCmd
	)
	_, err := t.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		vals = p.HMGet(ctx, t.p+":conns", conns...)
		exps = p.ZMScore(ctx, t.p+":exp", conns...)
		nodes = p.ZRangeWithScores(ctx, t.p+":nodes", 0, -1)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, t.err("read entries", err)
	}
	now := float64(ms(t.opts.Now()))
	nodeExp := make(map[string]float64)
	for _, z := range nodes.Val() {
		nodeExp[z.Member.(string)] = z.Score
	}
	ev := exps.Val()
	for i, v := range vals.Val() {
		s, ok := v.(string)
		if !ok || i >= len(ev) || ev[i] <= now { // gone, or expired (a missing score reads 0)
			continue
		}
		var d Device
		if err := json.Unmarshal([]byte(s), &d); err != nil {
			return nil, fmt.Errorf("presence: decoding an entry: %w", err)
		}
		if exp, ok := nodeExp[d.Instance]; ok && exp <= now {
			continue
		}
		out[d.Conn] = d
	}
	return out, nil
}

// onlineScan bounds the index entries one filtered Online call examines.
const onlineScan = 2000

func (t *RedisTracker) Online(ctx context.Context, q Query) (Page, error) {
	start := "-"
	if q.After != "" {
		u, c, ok := decodeCursor(q.After)
		if !ok {
			return Page{}, ErrBadCursor
		}
		start = "(" + u + "\x00" + c
	}
	matchField := ""
	switch {
	case q.Platform != "" && q.AppVersion != "":
		matchField = "pv:" + q.Platform + "\x00" + q.AppVersion
	case q.Platform != "":
		matchField = "p:" + q.Platform
	case q.AppVersion != "":
		matchField = "v:" + q.AppVersion
	}
	var (
		conns, users *redis.IntCmd
		match        *redis.StringCmd
	)
	_, err := t.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		conns = p.ZCard(ctx, t.p+":idx")
		users = p.ZCard(ctx, t.p+":users")
		if matchField != "" {
			match = p.HGet(ctx, t.p+":cnt", matchField)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return Page{}, t.err("online totals", err)
	}
	page := Page{Conns: int(conns.Val()), Users: int(users.Val()), Matching: int(conns.Val())}
	if match != nil {
		page.Matching, _ = strconv.Atoi(match.Val())
	}
	filtered := matchField != ""
	batch := q.Limit + 1 // one more tells whether there is a next page
	if filtered {
		batch = max(4*q.Limit, 200)
	}
	for scanned := 0; scanned < max(onlineScan, batch); {
		keys, err := t.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: t.p + ":idx", Start: start, Stop: "+",
			ByLex: true, Count: int64(batch)}).Result()
		if err != nil {
			return Page{}, t.err("online page", err)
		}
		cs := make([]string, len(keys))
		for i, k := range keys {
			_, cs[i], _ = strings.Cut(k, "\x00")
		}
		ds, err := t.live(ctx, cs)
		if err != nil {
			return Page{}, err
		}
		for i, k := range keys {
			if d, ok := ds[cs[i]]; ok && q.matches(&d) {
				if len(page.Devices) == q.Limit {
					last := page.Devices[len(page.Devices)-1]
					page.Next = encodeCursor(last.User, last.Conn)
					return page, nil
				}
				page.Devices = append(page.Devices, d)
			}
			start = "(" + k // examined
		}
		scanned += len(keys)
		if len(keys) < batch {
			return page, nil // the index is exhausted
		}
	}
	// The scan budget ran out: continue after the last examined entry.
	u, c, _ := strings.Cut(strings.TrimPrefix(start, "("), "\x00")
	page.Next = encodeCursor(u, c)
	return page, nil
}

// sortedLive loads the live entries of the conns in set key.
func (t *RedisTracker) sortedLive(ctx context.Context, key string) ([]Device, error) {
	conns, err := t.rdb.SMembers(ctx, key).Result()
	if err != nil {
		return nil, t.err("members", err)
	}
	m, err := t.live(ctx, conns)
	if err != nil {
		return nil, err
	}
	out := make([]Device, 0, len(m))
	for _, d := range m {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b Device) int {
		return cmp.Or(cmp.Compare(a.User, b.User), cmp.Compare(a.Conn, b.Conn))
	})
	return out, nil
}

func (t *RedisTracker) User(ctx context.Context, user string) ([]Device, error) {
	return t.sortedLive(ctx, t.p+":u:"+user)
}

func (t *RedisTracker) Devices(ctx context.Context, device string) ([]Device, error) {
	return t.sortedLive(ctx, t.p+":d:"+device)
}

func (t *RedisTracker) Recent(ctx context.Context, user string) (map[string]Device, error) {
	all, err := t.rdb.HGetAll(ctx, t.p+":last:"+user).Result()
	if err != nil {
		return nil, t.err("recent", err)
	}
	now := t.opts.Now()
	out := make(map[string]Device, len(all))
	for dev, v := range all {
		endStr, js, ok := strings.Cut(v, "|")
		ended, err := strconv.ParseInt(endStr, 10, 64)
		if !ok || err != nil {
			continue
		}
		var d Device
		if err := json.Unmarshal([]byte(js), &d); err != nil {
			continue
		}
		if ended > 0 {
			d.LastSeen = time.UnixMilli(ended).UTC()
		}
		if now.Before(d.LastSeen.Add(t.opts.RecentTTL)) {
			out[dev] = d
		}
	}
	return out, nil
}

func (t *RedisTracker) Join(ctx context.Context, room string, m Member) error {
	js, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("presence: encoding a member: %w", err)
	}
	n, err := joinScript.Run(ctx, t.rdb, nil, t.p, room, m.Conn, js, ms(t.opts.Now()), t.kttl.Milliseconds()).Int()
	if err != nil {
		return t.err("join", err)
	}
	if n == 0 {
		return ErrGone
	}
	return nil
}

func (t *RedisTracker) SetMember(ctx context.Context, room string, m Member) error {
	js, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("presence: encoding a member: %w", err)
	}
	n, err := setMemberScript.Run(ctx, t.rdb, nil, t.p, room, m.Conn, js).Int()
	if err != nil {
		return t.err("set member", err)
	}
	if n == 0 {
		return ErrGone
	}
	return nil
}

func (t *RedisTracker) Leave(ctx context.Context, room, conn string) (bool, error) {
	n, err := leaveScript.Run(ctx, t.rdb, nil, t.p, room, conn).Int()
	if err != nil {
		return false, t.err("leave", err)
	}
	return n == 1, nil
}

func (t *RedisTracker) Room(ctx context.Context, room string) ([]Member, error) {
	all, err := t.rdb.HGetAll(ctx, t.p+":r:"+room).Result()
	if err != nil {
		return nil, t.err("room", err)
	}
	conns := make([]string, 0, len(all))
	for c := range all {
		conns = append(conns, c)
	}
	live, err := t.live(ctx, conns)
	if err != nil {
		return nil, err
	}
	out := make([]Member, 0, len(live))
	for c, js := range all {
		if _, ok := live[c]; !ok {
			continue
		}
		var m Member
		if err := json.Unmarshal([]byte(js), &m); err != nil {
			return nil, fmt.Errorf("presence: decoding a member: %w", err)
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Member) int { return cmp.Compare(a.Conn, b.Conn) })
	return out, nil
}

func (t *RedisTracker) AllowTyping(ctx context.Context, room, user string, every time.Duration) (bool, error) {
	ok, err := t.rdb.SetNX(ctx, t.p+":t:"+room+"\x00"+user, 1, every).Result()
	if err != nil {
		return false, t.err("typing", err)
	}
	return ok, nil
}
