package embedded

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/syncgate/syncgate/storage"
)

// encodedConflict is a conflict record encoded before the write lock is
// taken, with what its index keys need.
type encodedConflict struct {
	id      string
	value   []byte // JSON storage.ConflictRecord
	created time.Time
	closed  time.Time // zero while open
	open    bool
}

// encodeConflicts stamps a zero Created, and the zero Closed of a closed
// record, with now.
func encodeConflicts(records []storage.ConflictRecord, now time.Time) ([]encodedConflict, error) {
	if len(records) == 0 {
		return nil, nil
	}
	out := make([]encodedConflict, len(records))
	for i, c := range records {
		if c.Created.IsZero() {
			c.Created = now
		}
		open := c.Status == storage.ConflictOpen
		if !open && c.Closed.IsZero() {
			c.Closed = now
		}
		v, err := json.Marshal(c)
		if err != nil {
			return nil, fmt.Errorf("encode conflict %d: %w", i, err)
		}
		out[i] = encodedConflict{id: c.ID, value: v, created: c.Created, closed: c.Closed, open: open}
	}
	return out, nil
}

// conflictMeta is the part of a stored record its index keys derive from.
type conflictMeta struct {
	Status  storage.ConflictStatus `json:"status"`
	Created time.Time              `json:"created"`
	Closed  time.Time              `json:"closed"`
}

func decodeConflictMeta(v []byte) (conflictMeta, error) {
	var m conflictMeta
	if err := json.Unmarshal(v, &m); err != nil {
		return m, fmt.Errorf("decode conflict: %w", err)
	}
	return m, nil
}

// conflictBuckets are one scope's conflict buckets.
type conflictBuckets struct {
	records, created, open, closed *bolt.Bucket
}

// conflictScope returns a scope's conflict buckets, ok false when the scope
// has none (it never had a record, or aging removed them all).
func conflictScope(tx *bolt.Tx, scope string) (conflictBuckets, bool) {
	if scope == "" {
		return conflictBuckets{}, false
	}
	sc := tx.Bucket([]byte(bucketConflicts)).Bucket([]byte(scope))
	if sc == nil {
		return conflictBuckets{}, false
	}
	return subBuckets(sc)
}

func subBuckets(sc *bolt.Bucket) (conflictBuckets, bool) {
	b := conflictBuckets{
		records: sc.Bucket([]byte(bucketRecords)),
		created: sc.Bucket([]byte(bucketCreated)),
		open:    sc.Bucket([]byte(bucketOpen)),
		closed:  sc.Bucket([]byte(bucketClosed)),
	}
	return b, b.records != nil && b.created != nil && b.open != nil && b.closed != nil
}

func createConflictScope(tx *bolt.Tx, scope string) (conflictBuckets, error) {
	sc, err := tx.Bucket([]byte(bucketConflicts)).CreateBucketIfNotExists([]byte(scope))
	if err != nil {
		return conflictBuckets{}, err
	}
	var b conflictBuckets
	for _, p := range []struct {
		bk   **bolt.Bucket
		name string
	}{{&b.records, bucketRecords}, {&b.created, bucketCreated}, {&b.open, bucketOpen}, {&b.closed, bucketClosed}} {
		if *p.bk, err = sc.CreateBucketIfNotExists([]byte(p.name)); err != nil {
			return conflictBuckets{}, err
		}
	}
	return b, nil
}

// indexKeys are the keys a record has in the created index and in the open
// or closed index (with the closed key's value).
type indexKeys struct {
	created, status, statusValue []byte
	open                         bool
}

func keysOf(id string, open bool, created, closed time.Time) indexKeys {
	k := indexKeys{created: conflictKey(created, id), open: open}
	if open {
		k.status, k.statusValue = k.created, []byte{}
	} else {
		k.status, k.statusValue = conflictKey(closed, id), timeKey(created)
	}
	return k
}

// putConflict writes a record, replacing the one with the same ID, and
// moves its index keys; keys that do not change are not rewritten.
func putConflict(tx *bolt.Tx, scope string, c encodedConflict) error {
	b, err := createConflictScope(tx, scope)
	if err != nil {
		return err
	}
	next := keysOf(c.id, c.open, c.created, c.closed)
	var prev *indexKeys
	if old := b.records.Get([]byte(c.id)); old != nil {
		m, err := decodeConflictMeta(old)
		if err != nil {
			return err
		}
		k := keysOf(c.id, m.Status == storage.ConflictOpen, m.Created, m.Closed)
		prev = &k
	}
	if err := b.records.Put([]byte(c.id), c.value); err != nil {
		return err
	}
	if prev == nil || !bytes.Equal(prev.created, next.created) {
		if prev != nil {
			if err := b.created.Delete(prev.created); err != nil {
				return err
			}
		}
		if err := b.created.Put(next.created, []byte{}); err != nil {
			return err
		}
	}
	if prev != nil && prev.open == next.open && bytes.Equal(prev.status, next.status) && bytes.Equal(prev.statusValue, next.statusValue) {
		return nil
	}
	if prev != nil {
		if err := b.statusIndex(prev.open).Delete(prev.status); err != nil {
			return err
		}
	}
	return b.statusIndex(next.open).Put(next.status, next.statusValue)
}

func (b conflictBuckets) statusIndex(open bool) *bolt.Bucket {
	if open {
		return b.open
	}
	return b.closed
}

func decodeConflict(v []byte) (storage.ConflictRecord, error) {
	var c storage.ConflictRecord
	if err := json.Unmarshal(v, &c); err != nil {
		return storage.ConflictRecord{}, fmt.Errorf("decode conflict: %w", err)
	}
	return c, nil
}

// Conflict returns one conflict record of scope, or storage.ErrNotFound.
func (s *Store) Conflict(ctx context.Context, scope, id string) (storage.ConflictRecord, error) {
	var c storage.ConflictRecord
	err := s.view(ctx, "conflict", func(tx *bolt.Tx) error {
		b, ok := conflictScope(tx, scope)
		if !ok {
			return storage.ErrNotFound
		}
		v := b.records.Get([]byte(id))
		if v == nil {
			return storage.ErrNotFound
		}
		var err error
		c, err = decodeConflict(v)
		return err
	})
	return c, err
}

// ListConflicts returns records of scope in (Created, ID) order, starting
// after the record named `after` ("" from the start), at most limit (which
// must be positive). It walks the open index when openOnly, the created
// index otherwise, so it reads only what it returns. An `after` that names
// no record of scope is storage.ErrNotFound.
func (s *Store) ListConflicts(ctx context.Context, scope string, openOnly bool, after string, limit int) ([]storage.ConflictRecord, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("embedded: list conflicts: limit %d must be positive", limit)
	}
	var out []storage.ConflictRecord
	err := s.view(ctx, "list conflicts", func(tx *bolt.Tx) error {
		out = nil
		b, ok := conflictScope(tx, scope)
		if !ok {
			if after != "" {
				return storage.ErrNotFound
			}
			return nil
		}
		index := b.created
		if openOnly {
			index = b.open
		}
		c := index.Cursor()
		var k []byte
		if after == "" {
			k, _ = c.First()
		} else {
			v := b.records.Get([]byte(after))
			if v == nil {
				return storage.ErrNotFound
			}
			m, err := decodeConflictMeta(v)
			if err != nil {
				return err
			}
			// The record may have left the open index since the last
			// page; its position in (Created, ID) order is still known.
			start := conflictKey(m.Created, after)
			if k, _ = c.Seek(start); bytes.Equal(k, start) {
				k, _ = c.Next()
			}
		}
		for ; k != nil && len(out) < limit; k, _ = c.Next() {
			v := b.records.Get(k[timeLen:])
			if v == nil {
				return fmt.Errorf("conflict index key without a record %q", k[timeLen:])
			}
			rec, err := decodeConflict(v)
			if err != nil {
				return err
			}
			out = append(out, rec)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// AgeConflicts marks open records created before abandonBefore as
// abandoned, with Closed stamped by Options.Now, then deletes closed records
// closed before deleteBefore. It walks the open and closed indexes, so it
// touches only what it changes, in write transactions of at most s.chunk
// records (and visits of at most s.chunk scopes), so Commit waits at most
// one chunk. A scope left without records loses its conflict buckets.
func (s *Store) AgeConflicts(ctx context.Context, abandonBefore, deleteBefore time.Time) (abandoned, deleted int, err error) {
	now := s.now()
	var from []byte // the scope to resume at; nil: the first
	for {
		var (
			a, d int
			next []byte
		)
		err := s.update(ctx, "age conflicts", func(tx *bolt.Tx) error {
			a, d, next = 0, 0, nil
			root := tx.Bucket([]byte(bucketConflicts))
			budget, visits, changed := s.chunk, 0, false
			scope := from
			for {
				c := root.Cursor()
				k, _ := c.First()
				if scope != nil {
					k, _ = c.Seek(scope)
				}
				if k == nil {
					break
				}
				name := bytes.Clone(k)
				if visits == s.chunk || budget == 0 {
					next = name
					break
				}
				visits++
				sc := root.Bucket(name)
				if sc == nil {
					return fmt.Errorf("conflicts: %q is not a bucket", name)
				}
				b, ok := subBuckets(sc)
				if !ok {
					return fmt.Errorf("conflicts of %q: missing buckets", name)
				}
				na, nd, done, err := ageScope(b, now, abandonBefore, deleteBefore, &budget)
				a, d = a+na, d+nd
				if err != nil {
					return err
				}
				if !done {
					next = name
					break
				}
				if k, _ := b.records.Cursor().First(); k == nil {
					if err := root.DeleteBucket(name); err != nil {
						return err
					}
					changed = true
				}
				scope = append(name, 0) // the smallest name after this one
			}
			if a == 0 && d == 0 && !changed {
				return errRollback // nothing to write: skip the fsync
			}
			return nil
		})
		if errors.Is(err, errRollback) {
			err = nil
		}
		if err != nil {
			return abandoned, deleted, err
		}
		abandoned, deleted = abandoned+a, deleted+d
		if next == nil {
			break
		}
		from = next
	}
	s.log.Debug("aged conflicts", "abandoned", abandoned, "deleted", deleted)
	return abandoned, deleted, nil
}

// ageScope ages one scope's records within *budget changes. done is false
// when the budget ran out before the scope was finished.
func ageScope(b conflictBuckets, now, abandonBefore, deleteBefore time.Time, budget *int) (abandoned, deleted int, done bool, err error) {
	open, more := collectBefore(b.open, timeKey(abandonBefore), *budget)
	for _, kv := range open {
		id := kv[0][timeLen:]
		v := b.records.Get(id)
		if v == nil {
			return abandoned, 0, false, fmt.Errorf("open index key without a record %q", id)
		}
		v, err := abandonRecord(v, now)
		if err != nil {
			return abandoned, 0, false, err
		}
		if err := b.records.Put(id, v); err != nil {
			return abandoned, 0, false, err
		}
		if err := b.open.Delete(kv[0]); err != nil {
			return abandoned, 0, false, err
		}
		if err := b.closed.Put(conflictKey(now, string(id)), kv[0][:timeLen]); err != nil {
			return abandoned, 0, false, err
		}
		abandoned++
	}
	*budget -= abandoned
	if more {
		return abandoned, 0, false, nil
	}
	closed, more := collectBefore(b.closed, timeKey(deleteBefore), *budget)
	for _, kv := range closed {
		id := kv[0][timeLen:]
		if len(kv[1]) != timeLen {
			return abandoned, deleted, false, fmt.Errorf("corrupt closed index value for %q", id)
		}
		if err := b.records.Delete(id); err != nil {
			return abandoned, deleted, false, err
		}
		if err := b.created.Delete(append(kv[1], id...)); err != nil {
			return abandoned, deleted, false, err
		}
		if err := b.closed.Delete(kv[0]); err != nil {
			return abandoned, deleted, false, err
		}
		deleted++
	}
	*budget -= deleted
	return abandoned, deleted, !more, nil
}

// collectBefore copies up to max key/value pairs of index whose time prefix
// is below limit; more reports that another such key follows. Changes wait
// until the scan is over: a bbolt cursor may skip keys when its bucket
// changes under it.
func collectBefore(index *bolt.Bucket, limit []byte, max int) (kvs [][2][]byte, more bool) {
	c := index.Cursor()
	for k, v := c.First(); k != nil && bytes.Compare(k[:timeLen], limit) < 0; k, v = c.Next() {
		if len(kvs) == max {
			return kvs, true
		}
		kvs = append(kvs, [2][]byte{bytes.Clone(k), bytes.Clone(v)})
	}
	return kvs, false
}

// abandonRecord rewrites a stored record as abandoned at now. It edits the
// JSON object field by field, so every other field keeps its exact bytes.
func abandonRecord(v []byte, now time.Time) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(v, &m); err != nil {
		return nil, fmt.Errorf("decode conflict: %w", err)
	}
	status, err := json.Marshal(storage.ConflictAbandoned)
	if err != nil {
		return nil, err
	}
	closed, err := json.Marshal(now)
	if err != nil {
		return nil, err
	}
	m["status"], m["closed"] = status, closed
	return json.Marshal(m)
}
