package conflict

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"
)

// DefaultCollection is the Registry key whose resolver serves every
// collection that has no resolver of its own.
const DefaultCollection = "*"

// Registry maps collection names to resolvers. It is filled at startup and
// then read by every commit, so reads are lock-free: the table is an
// immutable map behind an atomic pointer, and Set publishes a new copy.
// Set may still be called at any time (e.g. on a config reload); a commit
// already holding a resolver finishes with it.
//
// The zero value serves LWW (delete-wins) for every collection.
type Registry struct {
	mu    sync.Mutex                          // serializes writers
	table atomic.Pointer[map[string]Resolver] // never mutated once stored
}

// NewRegistry returns a registry whose default resolver is def; a nil def
// means LWW with DeleteWins.
func NewRegistry(def Resolver) *Registry {
	if def == nil {
		def = LWW{}
	}
	r := &Registry{}
	r.table.Store(&map[string]Resolver{DefaultCollection: def})
	return r
}

// Set makes res the resolver of collection; DefaultCollection ("*")
// replaces the default. It panics on an empty collection name or a nil
// resolver: both are programming errors, and a registry that silently
// served the wrong rule would corrupt data.
func (r *Registry) Set(collection string, res Resolver) {
	if collection == "" {
		panic("conflict: Registry.Set with an empty collection name")
	}
	if f, ok := res.(ResolverFunc); res == nil || (ok && f == nil) {
		panic(fmt.Sprintf("conflict: Registry.Set(%q) with a nil resolver", collection))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	next := map[string]Resolver{DefaultCollection: LWW{}}
	if old := r.table.Load(); old != nil {
		next = maps.Clone(*old)
	}
	next[collection] = res
	r.table.Store(&next)
}

// For returns the resolver of collection, or the default one.
func (r *Registry) For(collection string) Resolver {
	t := r.table.Load()
	if t == nil {
		return LWW{}
	}
	if res, ok := (*t)[collection]; ok {
		return res
	}
	return (*t)[DefaultCollection]
}

// Options configure a resolver built by name from config. Fields that a
// resolver does not use are ignored by it.
type Options struct {
	// Delete decides a delete against a concurrent update; "" means
	// DeleteWins.
	Delete DeletePolicy
}

// Factory builds a resolver from options. It returns an error for options
// it cannot honour; Lookup adds the resolver name and the "conflict: "
// prefix, so factory errors need neither.
type Factory func(opts Options) (Resolver, error)

// builtins are the resolvers every Catalog knows. The map is read-only:
// nothing may write to it after init.
var builtins = map[string]Factory{
	"lww": func(opts Options) (Resolver, error) {
		p, err := parseDeletePolicy(opts.Delete)
		if err != nil {
			return nil, err
		}
		return LWW{Delete: p}, nil
	},
}

// Lookup builds the built-in resolver called name ("lww"). An unknown name
// yields an error wrapping ErrUnknownResolver that quotes the name and lists
// the known ones. Embedders with their own resolvers use a Catalog.
func Lookup(name string, opts Options) (Resolver, error) {
	return lookup(builtins, nil, name, opts)
}

// Catalog is the set of resolver names that config may use: the built-ins
// plus resolvers registered in Go by an embedding program. Register at
// startup, before config is loaded; all methods are safe for concurrent use.
// The zero value knows the built-ins only.
type Catalog struct {
	mu     sync.RWMutex
	custom map[string]Factory
}

// NewCatalog returns a catalog of the built-in resolvers.
func NewCatalog() *Catalog { return &Catalog{} }

// Register adds a named resolver. Names are what config writes: non-empty,
// without spaces or control characters. A name that is already known
// (including a built-in) is an error, so an embedder cannot silently
// replace the rule that another part of the program relies on.
func (c *Catalog) Register(name string, f Factory) error {
	if name == "" || strings.ContainsFunc(name, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return Errorf("resolver name %q must be non-empty without spaces or control characters", name)
	}
	if f == nil {
		return Errorf("resolver %q: nil factory", name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := builtins[name]; ok {
		return Errorf("resolver %q is built in and cannot be replaced", name)
	}
	if _, ok := c.custom[name]; ok {
		return Errorf("resolver %q is already registered", name)
	}
	if c.custom == nil {
		c.custom = map[string]Factory{}
	}
	c.custom[name] = f
	return nil
}

// Lookup builds the resolver called name with opts.
func (c *Catalog) Lookup(name string, opts Options) (Resolver, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return lookup(builtins, c.custom, name, opts)
}

// Names returns every known resolver name, sorted.
func (c *Catalog) Names() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return names(builtins, c.custom)
}

func lookup(builtin, custom map[string]Factory, name string, opts Options) (Resolver, error) {
	f, ok := builtin[name]
	if !ok {
		f, ok = custom[name]
	}
	if !ok {
		return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknownResolver, name, strings.Join(names(builtin, custom), ", "))
	}
	r, err := f(opts)
	if err != nil {
		return nil, Errorf("resolver %q: %w", name, err)
	}
	if r == nil {
		return nil, Errorf("resolver %q: factory returned no resolver", name)
	}
	return r, nil
}

func names(builtin, custom map[string]Factory) []string {
	return slices.Sorted(func(yield func(string) bool) {
		for _, m := range []map[string]Factory{builtin, custom} {
			for n := range m {
				if !yield(n) {
					return
				}
			}
		}
	})
}
