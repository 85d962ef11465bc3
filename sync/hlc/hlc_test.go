package hlc

import (
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
	"time"
)

func TestParseRoundTrip(t *testing.T) {
	tests := []struct {
		in      string
		want    Timestamp
		wantErr bool
	}{
		{"", Timestamp{}, false},
		{"1763800000000-000000-phone", Timestamp{1763800000000, 0, "phone"}, false},
		{"0000000000001-000042-alice/laptop", Timestamp{1, 42, "alice/laptop"}, false},
		{"1763800000000-000001-a-b", Timestamp{1763800000000, 1, "a-b"}, false}, // node may contain '-'
		{"nope", Timestamp{}, true},
		{"1-x-n", Timestamp{}, true},
		{"-1-000000-n", Timestamp{}, true},
		{"1763800000000-1234567-n", Timestamp{}, true}, // logical over 6 digits
		{"1763800000000", Timestamp{}, true},
	}
	for _, tc := range tests {
		got, err := Parse(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v, err=%v", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err == nil && tc.in != "" && got.String() != tc.in {
			t.Errorf("String() = %q, want %q", got.String(), tc.in)
		}
	}
}

// The text form sorts like Compare: storage may index it as a string.
func TestTextOrderMatchesCompare(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ts := make([]Timestamp, 500)
	for i := range ts {
		ts[i] = Timestamp{Wall: 1_700_000_000_000 + r.Int64N(5), Logical: uint32(r.IntN(3)), Node: string(rune('a' + r.IntN(3)))}
	}
	byText := append([]Timestamp(nil), ts...)
	sort.Slice(byText, func(i, j int) bool { return byText[i].String() < byText[j].String() })
	byCompare := append([]Timestamp(nil), ts...)
	sort.Slice(byCompare, func(i, j int) bool { return byCompare[i].Compare(byCompare[j]) < 0 })
	for i := range ts {
		if byText[i] != byCompare[i] {
			t.Fatalf("order differs at %d: %v vs %v", i, byText[i], byCompare[i])
		}
	}
}

func TestClockMonotonic(t *testing.T) {
	wall := time.UnixMilli(1_000)
	var mu sync.Mutex
	c := New("n", func() time.Time { mu.Lock(); defer mu.Unlock(); return wall })
	a := c.Now()
	b := c.Now() // same millisecond: logical tick
	if !b.After(a) || b.Logical != a.Logical+1 {
		t.Fatalf("%v then %v", a, b)
	}
	// A remote clock ahead of ours pulls ours forward.
	remote := Timestamp{Wall: 5_000, Logical: 7, Node: "x"}
	obs := c.Observe(remote)
	if !obs.After(remote) || obs.Node != "n" {
		t.Fatalf("observe %v gave %v", remote, obs)
	}
	if next := c.Now(); !next.After(obs) {
		t.Fatalf("Now %v not after observed %v", next, obs)
	}
	// Our wall clock moving backwards does not move the clock backwards.
	mu.Lock()
	wall = time.UnixMilli(10)
	mu.Unlock()
	if back := c.Now(); !back.After(obs) {
		t.Fatalf("clock went backwards: %v", back)
	}
	// Logical overflow borrows the next millisecond.
	c2 := New("n", func() time.Time { return time.UnixMilli(1) })
	c2.last = Timestamp{Wall: 1, Logical: MaxLogical, Node: "n"}
	if o := c2.Now(); o.Wall != 2 || o.Logical != 0 {
		t.Fatalf("overflow gave %v", o)
	}
}

func TestClockConcurrentUnique(t *testing.T) {
	c := New("n", nil)
	var mu sync.Mutex
	seen := map[Timestamp]bool{}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				ts := c.Now()
				mu.Lock()
				if seen[ts] {
					t.Errorf("duplicate %v", ts)
				}
				seen[ts] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}
