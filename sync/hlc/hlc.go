// Package hlc implements the hybrid logical clock that orders concurrent
// writes from devices whose wall clocks disagree.
//
// A Timestamp is (wall milliseconds, logical counter, node). Timestamps are
// totally ordered: wall first, then logical, then node as a tie-break, so
// two devices never produce equal timestamps and per-field last-writer-wins is
// deterministic whatever order the server sees the writes in.
//
// The text form is "WWWWWWWWWWWWW-LLLLLL-node": 13 zero-padded wall digits, 6
// zero-padded logical digits and the node id. Text forms of timestamps from
// the same era sort lexicographically in the same order as Compare, which
// lets storage index them as strings.
//
// Clock is goroutine-safe. Timestamp is a value type.
package hlc

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MaxLogical bounds the logical counter; the text form reserves 6 digits.
const MaxLogical = 999_999

// ErrInvalid is returned for a timestamp that cannot be parsed.
var ErrInvalid = errors.New("hlc: invalid timestamp")

// Timestamp is one reading of a hybrid logical clock.
type Timestamp struct {
	Wall    int64  // milliseconds since the Unix epoch
	Logical uint32 // counter within one Wall millisecond
	Node    string // device or server id; breaks ties
}

// IsZero reports whether t is the zero timestamp, which sorts before all others.
func (t Timestamp) IsZero() bool { return t.Wall == 0 && t.Logical == 0 && t.Node == "" }

// Compare returns -1, 0 or +1 as t is before, equal to or after u.
func (t Timestamp) Compare(u Timestamp) int {
	switch {
	case t.Wall < u.Wall:
		return -1
	case t.Wall > u.Wall:
		return 1
	case t.Logical < u.Logical:
		return -1
	case t.Logical > u.Logical:
		return 1
	}
	return strings.Compare(t.Node, u.Node)
}

// After reports whether t sorts strictly after u.
func (t Timestamp) After(u Timestamp) bool { return t.Compare(u) > 0 }

// String returns the text form.
func (t Timestamp) String() string {
	if t.IsZero() {
		return ""
	}
	return fmt.Sprintf("%013d-%06d-%s", t.Wall, t.Logical, t.Node)
}

// Parse reads the text form produced by String. The empty string is the zero
// timestamp.
func Parse(s string) (Timestamp, error) {
	if s == "" {
		return Timestamp{}, nil
	}
	w, rest, ok := strings.Cut(s, "-")
	if !ok {
		return Timestamp{}, fmt.Errorf("%w: %q", ErrInvalid, s)
	}
	l, node, ok := strings.Cut(rest, "-")
	if !ok || len(w) == 0 || len(w) > 16 || len(l) == 0 || len(l) > 6 || len(node) > 128 {
		return Timestamp{}, fmt.Errorf("%w: %q", ErrInvalid, s)
	}
	wall, err := strconv.ParseInt(w, 10, 64)
	if err != nil || wall < 0 {
		return Timestamp{}, fmt.Errorf("%w: %q", ErrInvalid, s)
	}
	logical, err := strconv.ParseUint(l, 10, 32)
	if err != nil {
		return Timestamp{}, fmt.Errorf("%w: %q", ErrInvalid, s)
	}
	return Timestamp{Wall: wall, Logical: uint32(logical), Node: node}, nil
}

// MarshalText implements encoding.TextMarshaler (JSON strings).
func (t Timestamp) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (t *Timestamp) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// Clock issues monotonically increasing timestamps for one node. The zero
// value is not usable; call New.
type Clock struct {
	node string
	now  func() time.Time

	mu   sync.Mutex
	last Timestamp
}

// New returns a clock for node. now may be nil (time.Now).
func New(node string, now func() time.Time) *Clock {
	if now == nil {
		now = time.Now
	}
	return &Clock{node: node, now: now}
}

// Now returns a timestamp after every timestamp this clock has issued or observed.
func (c *Clock) Now() Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	wall := c.now().UnixMilli()
	if wall > c.last.Wall {
		c.last = Timestamp{Wall: wall, Node: c.node}
	} else {
		c.tickLocked()
	}
	return c.last
}

// Observe merges a remote timestamp into the clock, so that later Now values
// sort after it. It returns the merged reading.
func (c *Clock) Observe(remote Timestamp) Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	wall := c.now().UnixMilli()
	switch {
	case wall > c.last.Wall && wall > remote.Wall:
		c.last = Timestamp{Wall: wall, Node: c.node}
	case remote.Wall > c.last.Wall:
		c.last = Timestamp{Wall: remote.Wall, Logical: remote.Logical, Node: c.node}
		c.tickLocked()
	case remote.Wall == c.last.Wall && remote.Logical > c.last.Logical:
		c.last.Logical = remote.Logical
		c.tickLocked()
	default:
		c.tickLocked()
	}
	return c.last
}

// tickLocked advances the logical counter; on overflow it borrows the next
// millisecond, which keeps timestamps monotonic at the cost of running at
// most 1 ms ahead of the wall clock per million events in one millisecond.
func (c *Clock) tickLocked() {
	if c.last.Logical >= MaxLogical {
		c.last.Wall++
		c.last.Logical = 0
		return
	}
	c.last.Logical++
}
