package embedded

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/syncgate/syncgate/storage"
)

type encodedReceipt struct {
	key     []byte // mutKey
	value   []byte // JSON
	created time.Time
}

func encodeReceipts(receipts []storage.Receipt, now time.Time) ([]encodedReceipt, error) {
	out := make([]encodedReceipt, len(receipts))
	for i, r := range receipts {
		if r.Created.IsZero() {
			r.Created = now
		}
		v, err := json.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("encode receipt %d: %w", i, err)
		}
		out[i] = encodedReceipt{key: mutKey(r.Device, r.MutationID), value: v, created: r.Created}
	}
	return out, nil
}

// putReceipt stores a receipt and its expiry-index key, dropping the index
// key of a receipt it replaces so that expiry never deletes a newer one.
func putReceipt(tx *bolt.Tx, r encodedReceipt) error {
	rb, age := tx.Bucket([]byte(bucketReceipts)), tx.Bucket([]byte(bucketReceiptAge))
	if old := rb.Get(r.key); old != nil {
		var prev struct {
			Created time.Time `json:"created"`
		}
		if err := json.Unmarshal(old, &prev); err != nil {
			return fmt.Errorf("decode receipt: %w", err)
		}
		if err := age.Delete(append(timeKey(prev.Created), r.key...)); err != nil {
			return err
		}
	}
	if err := rb.Put(r.key, r.value); err != nil {
		return err
	}
	return age.Put(append(timeKey(r.created), r.key...), []byte{})
}

// Receipt returns the stored receipt of a mutation. When it is missing
// (expired, or its batch lost a race after this mutation's entry
// committed) but the mutation index still leads to the entry, it rebuilds
// an Applied receipt from that entry. Otherwise storage.ErrNotFound.
func (s *Store) Receipt(ctx context.Context, dev storage.DeviceRef, mutationID uint64) (storage.Receipt, error) {
	var r storage.Receipt
	err := s.view(ctx, "receipt", func(tx *bolt.Tx) error {
		key := mutKey(dev, mutationID)
		if v := tx.Bucket([]byte(bucketReceipts)).Get(key); v != nil {
			r = storage.Receipt{}
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decode receipt: %w", err)
			}
			return nil
		}
		var err error
		r, err = rebuildReceipt(tx, key, dev, mutationID)
		return err
	})
	return r, err
}

func rebuildReceipt(tx *bolt.Tx, key []byte, dev storage.DeviceRef, mutationID uint64) (storage.Receipt, error) {
	v := tx.Bucket([]byte(bucketMutations)).Get(key)
	if v == nil {
		return storage.Receipt{}, storage.ErrNotFound
	}
	ref, err := decodeMutRef(v)
	if err != nil {
		return storage.Receipt{}, err
	}
	log := scopeSub(tx, ref.scope, bucketLog)
	if log == nil {
		return storage.Receipt{}, storage.ErrNotFound
	}
	raw := log.Get(seqKey(ref.seq))
	if raw == nil {
		return storage.Receipt{}, storage.ErrNotFound
	}
	e, err := decodeEntry(raw)
	if err != nil {
		return storage.Receipt{}, err
	}
	return storage.Receipt{
		Device:     dev,
		MutationID: mutationID,
		Outcome:    storage.Applied,
		Scope:      e.Scope,
		Collection: e.Collection,
		DocID:      e.DocID,
		Version:    e.Version,
		Seq:        e.Seq,
		Deleted:    e.Deleted,
		Created:    e.Committed,
	}, nil
}

// ExpireReceipts deletes receipts created before olderThan. It walks the
// creation-time index in write transactions of at most s.chunk receipts, so
// Commit waits at most one chunk.
func (s *Store) ExpireReceipts(ctx context.Context, olderThan time.Time) (int, error) {
	total := 0
	limit := timeKey(olderThan)
	for {
		n, more := 0, false
		err := s.update(ctx, "expire receipts", func(tx *bolt.Tx) error {
			n, more = 0, false
			rb, age := tx.Bucket([]byte(bucketReceipts)), tx.Bucket([]byte(bucketReceiptAge))
			var keys [][]byte
			c := age.Cursor()
			for k, _ := c.First(); k != nil && string(k[:timeLen]) < string(limit); k, _ = c.Next() {
				if len(keys) == s.chunk {
					more = true
					break
				}
				keys = append(keys, append([]byte(nil), k...))
			}
			// Deleting after the scan: a bbolt cursor may skip keys when
			// the bucket changes under it.
			for _, k := range keys {
				if err := age.Delete(k); err != nil {
					return err
				}
				if err := rb.Delete(k[timeLen:]); err != nil {
					return err
				}
			}
			n = len(keys)
			if n == 0 {
				return errRollback // nothing to write: skip the fsync
			}
			return nil
		})
		total += n
		if errors.Is(err, errRollback) {
			err = nil
		}
		if err != nil {
			return total, err
		}
		if !more {
			break
		}
	}
	s.log.Debug("expired receipts", "removed", total, "olderThan", olderThan)
	return total, nil
}

// Device returns a device's state; an unknown device has a zero state
// (with Device set).
func (s *Store) Device(ctx context.Context, dev storage.DeviceRef) (storage.DeviceState, error) {
	var st storage.DeviceState
	err := s.view(ctx, "device", func(tx *bolt.Tx) error {
		var err error
		if st, err = getDevice(tx, dev); err != nil {
			return err
		}
		// The contract: the mark covers every mutation of the device that
		// has a log entry, even if the batch's progress write was lost.
		st.LastMutationID = max(st.LastMutationID, lastIndexedMutation(tx, dev))
		return nil
	})
	return st, err
}

// lastIndexedMutation is the highest mutation id of dev in the mutation
// index (0 if none): the last key under the device's prefix.
func lastIndexedMutation(tx *bolt.Tx, dev storage.DeviceRef) uint64 {
	prefix := devKey(dev)
	top := mutKey(dev, ^uint64(0))
	c := tx.Bucket([]byte(bucketMutations)).Cursor()
	k, _ := c.Seek(top) // the first key >= the device's highest possible key
	switch {
	case k == nil:
		k, _ = c.Last()
	case !bytes.Equal(k, top):
		k, _ = c.Prev()
	}
	if len(k) != len(prefix)+8 || !bytes.HasPrefix(k, prefix) {
		return 0
	}
	return binary.BigEndian.Uint64(k[len(prefix):])
}

// SaveCheckpoints merges checkpoints into the device state; a seq only
// moves forward, and so does LastSeen.
func (s *Store) SaveCheckpoints(ctx context.Context, dev storage.DeviceRef, checkpoints map[string]uint64, seen time.Time) error {
	if dev == (storage.DeviceRef{}) {
		return errors.New("embedded: save checkpoints: empty device")
	}
	err := s.update(ctx, "save checkpoints", func(tx *bolt.Tx) error {
		changed := false
		err := updateDevice(tx, dev, func(st *storage.DeviceState) bool {
			for scope, seq := range checkpoints {
				if seq > st.Checkpoints[scope] {
					if st.Checkpoints == nil {
						st.Checkpoints = make(map[string]uint64, len(checkpoints))
					}
					st.Checkpoints[scope] = seq
					changed = true
				}
			}
			if seen.After(st.LastSeen) {
				st.LastSeen = seen
				changed = true
			}
			return changed
		})
		if err == nil && !changed {
			return errRollback // nothing moved forward: skip the fsync
		}
		return err
	})
	if errors.Is(err, errRollback) {
		return nil
	}
	return err
}

func getDevice(tx *bolt.Tx, dev storage.DeviceRef) (storage.DeviceState, error) {
	st := storage.DeviceState{Device: dev}
	v := tx.Bucket([]byte(bucketDevices)).Get(devKey(dev))
	if v == nil {
		return st, nil
	}
	if err := json.Unmarshal(v, &st); err != nil {
		return storage.DeviceState{}, fmt.Errorf("decode device %s: %w", dev, err)
	}
	return st, nil
}

// updateDevice applies fn to the device's state and writes it back when fn
// reports a change.
func updateDevice(tx *bolt.Tx, dev storage.DeviceRef, fn func(*storage.DeviceState) bool) error {
	st, err := getDevice(tx, dev)
	if err != nil {
		return err
	}
	if !fn(&st) {
		return nil
	}
	st.Device = dev
	v, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode device %s: %w", dev, err)
	}
	return tx.Bucket([]byte(bucketDevices)).Put(devKey(dev), v)
}
