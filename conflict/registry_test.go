package conflict

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

// named is a resolver identifiable in assertions.
type named string

func (named) Resolve(*Doc, Op) (Result, error) { return Result{}, nil }

func TestRegistryRoutesCollections(t *testing.T) {
	r := NewRegistry(named("default"))
	r.Set("todos", named("todos"))
	for _, tc := range []struct {
		collection string
		want       Resolver
	}{
		{"todos", named("todos")},
		{"notes", named("default")},
		{"", named("default")},
		{DefaultCollection, named("default")},
	} {
		if got := r.For(tc.collection); got != tc.want {
			t.Errorf("For(%q) = %v, want %v", tc.collection, got, tc.want)
		}
	}
	r.Set(DefaultCollection, named("new default"))
	if got := r.For("notes"); got != named("new default") {
		t.Errorf("after Set(*): For(notes) = %v", got)
	}
	if got := r.For("todos"); got != named("todos") {
		t.Errorf("after Set(*): For(todos) = %v", got)
	}
	r.Set("todos", named("todos v2"))
	if got := r.For("todos"); got != named("todos v2") {
		t.Errorf("Set twice: For(todos) = %v", got)
	}
}

func TestRegistryDefaultIsLWWDeleteWins(t *testing.T) {
	for name, r := range map[string]*Registry{"NewRegistry(nil)": NewRegistry(nil), "zero value": {}} {
		if got := r.For("anything"); got != (LWW{}) {
			t.Errorf("%s: default = %#v, want LWW{}", name, got)
		}
	}
	var zero Registry
	zero.Set("todos", named("todos"))
	if zero.For("todos") != named("todos") || zero.For("other") != (LWW{}) {
		t.Error("zero Registry with Set lost its default")
	}
	// LWW{} is delete-wins.
	res, _ := LWW{}.Resolve(tomb(), patchOp(at(50), 1, other, PatchOps{Set: obj{"a": 1.0}}))
	if !res.Doc.Deleted {
		t.Error("LWW{} resurrected a tombstone: not delete-wins")
	}
}

func TestRegistrySetPanicsOnProgrammingErrors(t *testing.T) {
	for name, f := range map[string]func(){
		"nil resolver":     func() { NewRegistry(nil).Set("todos", nil) },
		"empty name":       func() { NewRegistry(nil).Set("", LWW{}) },
		"nil ResolverFunc": func() { NewRegistry(nil).Set("todos", ResolverFunc(nil)) },
	} {
		func() {
			defer func() {
				if v := recover(); v == nil || !strings.HasPrefix(fmt.Sprint(v), "conflict: ") {
					t.Errorf("%s: recovered %v, want a conflict: panic", name, v)
				}
			}()
			f()
		}()
	}
}

// Reads run concurrently with a (rare) Set; run with -race.
func TestRegistryConcurrentReads(t *testing.T) {
	r := NewRegistry(nil)
	r.Set("todos", LWW{Delete: UpdateWins})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				res := r.For("todos")
				if res == nil || r.For("other") == nil {
					t.Error("For returned nil")
					return
				}
				if g == 0 && i%100 == 0 {
					r.Set(fmt.Sprintf("c%d", i), LWW{})
				}
			}
		}()
	}
	wg.Wait()
	if r.For("c1900") != (LWW{}) || r.For("todos") != (LWW{Delete: UpdateWins}) {
		t.Error("lost a Set")
	}
}

func TestLookupBuiltins(t *testing.T) {
	for _, tc := range []struct {
		opts Options
		want Resolver
	}{
		{Options{}, LWW{Delete: DeleteWins}},
		{Options{Delete: DeleteWins}, LWW{Delete: DeleteWins}},
		{Options{Delete: UpdateWins}, LWW{Delete: UpdateWins}},
	} {
		got, err := Lookup("lww", tc.opts)
		if err != nil || got != tc.want {
			t.Errorf("Lookup(lww, %+v) = %#v, %v; want %#v", tc.opts, got, err, tc.want)
		}
	}
}

func TestLookupErrors(t *testing.T) {
	_, err := Lookup("last-writer", Options{})
	if !errors.Is(err, ErrUnknownResolver) {
		t.Fatalf("err = %v, want ErrUnknownResolver", err)
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "conflict: ") || !strings.Contains(msg, `"last-writer"`) || !strings.Contains(msg, "lww") {
		t.Errorf("message %q should name the bad value and the known ones", msg)
	}

	_, err = Lookup("lww", Options{Delete: "sometimes"})
	if err == nil || errors.Is(err, ErrUnknownResolver) {
		t.Fatalf("bad option err = %v", err)
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "conflict: ") || strings.Count(msg, "conflict: ") != 1 ||
		!strings.Contains(msg, `"lww"`) || !strings.Contains(msg, `"sometimes"`) {
		t.Errorf("message %q should be prefixed once and name resolver and value", msg)
	}
}

func TestCatalog(t *testing.T) {
	var zero Catalog
	if got, err := zero.Lookup("lww", Options{}); err != nil || got != (LWW{Delete: DeleteWins}) {
		t.Errorf("zero Catalog Lookup(lww) = %v, %v", got, err)
	}

	c := NewCatalog()
	gotOpts := Options{}
	mine := func(opts Options) (Resolver, error) {
		gotOpts = opts
		return named("mine"), nil
	}
	if err := c.Register("mine", mine); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Lookup("mine", Options{Delete: UpdateWins}); err != nil || got != named("mine") || gotOpts.Delete != UpdateWins {
		t.Errorf("Lookup(mine) = %v, %v; factory saw %+v", got, err, gotOpts)
	}
	if got := c.Names(); !reflect.DeepEqual(got, []string{"client-wins", "lww", "manual", "mine", "server-wins"}) {
		t.Errorf("Names = %v", got)
	}
	// A registration is local to its catalog.
	if _, err := Lookup("mine", Options{}); !errors.Is(err, ErrUnknownResolver) {
		t.Errorf("package Lookup sees a catalog registration: %v", err)
	}
	if _, err := NewCatalog().Lookup("mine", Options{}); !errors.Is(err, ErrUnknownResolver) {
		t.Errorf("another catalog sees a registration: %v", err)
	}
	_, err := c.Lookup("nope", Options{})
	if !errors.Is(err, ErrUnknownResolver) || !strings.Contains(err.Error(), "client-wins, lww, manual, mine, server-wins") {
		t.Errorf("unknown in catalog: %v", err)
	}

	for name, f := range map[string]Factory{
		"mine":  mine, // already registered
		"lww":   mine, // built in
		"":      mine,
		"my rs": mine,
		"nilf":  nil,
	} {
		if err := c.Register(name, f); err == nil || !strings.HasPrefix(err.Error(), "conflict: ") {
			t.Errorf("Register(%q) err = %v, want a conflict: error", name, err)
		}
	}

	if err := c.Register("broken", func(Options) (Resolver, error) { return nil, errors.New("needs a field list") }); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Lookup("broken", Options{}); err == nil || !strings.Contains(err.Error(), `resolver "broken": needs a field list`) {
		t.Errorf("factory error = %v", err)
	}
	if err := c.Register("empty", func(Options) (Resolver, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Lookup("empty", Options{}); err == nil {
		t.Error("a factory returning no resolver was accepted")
	}
	if !slices.IsSorted(c.Names()) {
		t.Errorf("Names not sorted: %v", c.Names())
	}
}

func TestCatalogConcurrentUse(t *testing.T) {
	c := NewCatalog()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				if _, err := c.Lookup("lww", Options{}); err != nil {
					t.Error(err)
					return
				}
				if i%50 == 0 {
					_ = c.Register(fmt.Sprintf("r%d-%d", g, i), func(Options) (Resolver, error) { return LWW{}, nil })
				}
				_ = c.Names()
			}
		}()
	}
	wg.Wait()
	if n := len(c.Names()); n != len(builtins)+4*4 {
		t.Errorf("%d names, want %d", n, len(builtins)+4*4)
	}
}
