package embedded

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// The chain index finds the entry of an older version of a document
// (Store.Version) without an index ordered by document. Such an index
// would take one insert per entry at the document's place in the B-tree,
// so a batch touching n documents would dirty n leaf pages (measured: it
// halved BenchmarkCommitBatch100). The chain is keyed by seq instead, so
// it only ever appends, like the log.
//
// Each entry's link names the entry of the previous version of its
// document (prev, 0 for version 1 and for the first entry after a purge
// marker) and a jump pointer to an older one.
// Jump pointers follow the skew-binary scheme (Myers, "An applicative
// random-access stack", 1983): with version 0 as a root that jumps to
// itself, an entry whose parent p satisfies
//
//	v(p) - v(jump(p)) == v(jump(p)) - v(jump(jump(p)))
//
// jumps to jump(jump(p)), and otherwise to p. Building a link reads two
// links; reaching version v from version L takes O(log(L-v)) steps.
type link struct {
	prev, jump, jumpVersion uint64
}

func encodeLink(l link) []byte {
	b := make([]byte, linkLen)
	binary.BigEndian.PutUint64(b, l.prev)
	binary.BigEndian.PutUint64(b[8:], l.jump)
	binary.BigEndian.PutUint64(b[16:], l.jumpVersion)
	return b
}

// getLink reads the link of seq; ok is false when seq has none
// (compacted, or never committed).
func getLink(chain *bolt.Bucket, seq uint64) (l link, ok bool, err error) {
	v := chain.Get(seqKey(seq))
	if v == nil {
		return link{}, false, nil
	}
	if len(v) != linkLen {
		return link{}, false, fmt.Errorf("corrupt chain value at seq %d (%d bytes)", seq, len(v))
	}
	return link{
		prev:        binary.BigEndian.Uint64(v),
		jump:        binary.BigEndian.Uint64(v[8:]),
		jumpVersion: binary.BigEndian.Uint64(v[16:]),
	}, true, nil
}

// newLink builds the link of the next entry of a document whose latest
// entry is parent (version parentVersion); parent 0 means the document has
// no entry in the log: it never had one (the new one is version 1), or its
// latest is a purge marker (the new one is parentVersion+1 and starts a
// new life, whose walks stop at it). Either way the link is empty. When a
// link it needs is missing it falls back to jumping to the parent: still
// correct, only slower.
func newLink(chain *bolt.Bucket, parent, parentVersion uint64) (link, error) {
	if parent == 0 {
		return link{}, nil
	}
	fallback := link{prev: parent, jump: parent, jumpVersion: parentVersion}
	p, ok, err := getLink(chain, parent)
	if err != nil || !ok {
		return fallback, err
	}
	var pj link // the link of jump(parent); the root's is zero (it jumps to itself)
	if p.jump != 0 {
		if pj, ok, err = getLink(chain, p.jump); err != nil || !ok {
			return fallback, err
		}
	}
	if p.jumpVersion < parentVersion && parentVersion-p.jumpVersion == p.jumpVersion-pj.jumpVersion {
		return link{prev: parent, jump: pj.jump, jumpVersion: pj.jumpVersion}, nil
	}
	return fallback, nil
}

// findVersion walks from a document's latest entry to the entry of
// version v and returns its seq, or ok false when there is none (always
// when latest is a purge marker, whose versions are all gone). A step
// needs the link of every entry it passes, so an entry behind a compacted
// newer version is not found; compaction removes a document's superseded
// entries oldest first (they are committed in version order), so that
// only happens with caller-set Committed times out of order.
func findVersion(chain, log *bolt.Bucket, latest docRef, v uint64) (seq uint64, ok bool, err error) {
	if v == 0 || v > latest.version || latest.seq == 0 {
		return 0, false, nil
	}
	cur, curVersion := latest.seq, latest.version
	for curVersion > v {
		l, ok, err := getLink(chain, cur)
		if err != nil || !ok {
			return 0, false, err
		}
		if l.jump != 0 && l.jumpVersion >= v && present(chain, log, l.jump, l.jumpVersion == v) {
			cur, curVersion = l.jump, l.jumpVersion
			continue
		}
		if l.prev == 0 {
			return 0, false, nil // a new life's first entry, or a migrated one
		}
		cur, curVersion = l.prev, curVersion-1
	}
	return cur, log.Get(seqKey(cur)) != nil, nil
}

// present reports whether the walk can go on from seq: its entry exists
// if it is the target, its link otherwise.
func present(chain, log *bolt.Bucket, seq uint64, target bool) bool {
	if target {
		return log.Get(seqKey(seq)) != nil
	}
	return chain.Get(seqKey(seq)) != nil
}
