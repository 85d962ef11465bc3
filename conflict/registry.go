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

// Collection is what the engine needs to know about one collection.
type Collection struct {
	Resolver Resolver
	// MaxDocBytes and MaxDepth limit the resulting document (its JSON size
	// in bytes, its nesting depth). 0 means the server-wide limit. The
	// engine rejects a mutation over either with too_large or too_deep.
	MaxDocBytes int
	MaxDepth    int
}

// Registry maps collection names to resolvers and limits. It is filled at
// startup and then read by every commit, so reads are lock-free: the table
// is an immutable map behind an atomic pointer, and Set publishes a new
// copy. Set may still be called at any time (e.g. on a config reload); a
// commit already holding a resolver finishes with it.
//
// The zero value serves LWW (delete-wins) for every collection. A
// registry from Build without a "*" entry knows only the collections it
// names (see Collection).
type Registry struct {
	mu    sync.Mutex                            // serializes writers
	table atomic.Pointer[map[string]Collection] // never mutated once stored
}

// NewRegistry returns a registry whose default resolver is def; a nil def
// means LWW with DeleteWins. Every collection is known.
func NewRegistry(def Resolver) *Registry {
	if def == nil {
		def = LWW{}
	}
	r := &Registry{}
	r.table.Store(&map[string]Collection{DefaultCollection: {Resolver: def}})
	return r
}

// Set makes res the resolver of collection (keeping its limits, if it had
// an entry); DefaultCollection ("*") replaces the default. It panics on an
// empty collection name or a nil resolver: both are programming errors, and
// a registry that silently served the wrong rule would corrupt data.
func (r *Registry) Set(collection string, res Resolver) {
	if collection == "" {
		panic("conflict: Registry.Set with an empty collection name")
	}
	if f, ok := res.(ResolverFunc); res == nil || (ok && f == nil) {
		panic(fmt.Sprintf("conflict: Registry.Set(%q) with a nil resolver", collection))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	next := map[string]Collection{DefaultCollection: {Resolver: LWW{}}}
	if old := r.table.Load(); old != nil {
		next = maps.Clone(*old)
	}
	c := next[collection]
	c.Resolver = res
	next[collection] = c
	r.table.Store(&next)
}

// For returns the resolver of collection, or the default one. It is
// lenient: a collection that Collection reports unknown gets LWW{}, so
// callers that must refuse unknown collections use Collection.
func (r *Registry) For(collection string) Resolver {
	if c, ok := r.Collection(collection); ok {
		return c.Resolver
	}
	return LWW{}
}

// Collection returns the settings of the named collection, or of the "*"
// entry when it has none of its own. ok is false when neither exists: the
// registry came from a non-empty config without "*", and the engine
// rejects such collections (unknown_collection).
func (r *Registry) Collection(name string) (Collection, bool) {
	t := r.table.Load()
	if t == nil {
		return Collection{Resolver: LWW{}}, true
	}
	if c, ok := (*t)[name]; ok {
		return c, true
	}
	c, ok := (*t)[DefaultCollection]
	return c, ok
}

// Options configure a resolver built by name from config. Fields that a
// resolver does not use are ignored by it.
type Options struct {
	// Delete decides a delete against a concurrent update; "" means the
	// config did not say (lww then uses DeleteWins). The built-in
	// server-wins, client-wins and manual refuse it: they decide deletes
	// themselves.
	Delete DeletePolicy
	// Fields are per-field rules (config "fields"). Only lww takes them;
	// the other built-ins refuse them. The map belongs to the factory.
	Fields map[string]FieldRule
	// Collection is the collection being configured ("*" for the
	// default), for messages and for resolvers that care.
	Collection string
}

// Factory builds a resolver from options. It returns an error for options
// it cannot honour; Lookup adds the resolver name and the "conflict: "
// prefix, so factory errors need neither.
type Factory func(opts Options) (Resolver, error)

// builtins are the resolvers every Catalog knows. The map is read-only:
// nothing may write to it after init.
var builtins = map[string]Factory{
	string(ModeLWW): func(opts Options) (Resolver, error) {
		p, err := parseDeletePolicy(opts.Delete)
		if err != nil {
			return nil, err
		}
		if len(opts.Fields) == 0 {
			return LWW{Delete: p}, nil
		}
		pol := Policy{Mode: ModeLWW, Fields: maps.Clone(opts.Fields), Deletes: p}
		for _, f := range slices.Sorted(maps.Keys(pol.Fields)) {
			if reason := checkFieldName(f); reason != "" {
				return nil, fmt.Errorf("field %q: %s", f, reason)
			}
			if _, err := parseRule(pol.Fields[f]); err != nil {
				return nil, fmt.Errorf("field %q: %v", f, err)
			}
		}
		return pol, nil
	},
	string(ModeServerWins): modeFactory(ModeServerWins),
	string(ModeClientWins): modeFactory(ModeClientWins),
	string(ModeManual):     modeFactory(ModeManual),
}

func modeFactory(m Mode) Factory {
	return func(opts Options) (Resolver, error) {
		if opts.Delete != "" {
			return nil, fmt.Errorf("%s decides deletes itself; a delete policy applies to lww only", m)
		}
		if len(opts.Fields) > 0 {
			return nil, fmt.Errorf("field rules apply to lww only; %s decides whole documents", m)
		}
		return Policy{Mode: m}, nil
	}
}

// Lookup builds the built-in resolver called name ("lww", "server-wins",
// "client-wins", "manual"). lww without field rules is LWW{Delete}; every
// other built-in is a Policy. An unknown name
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

// factory returns the factory called name, the known names (for an error)
// and whether name is known.
func (c *Catalog) factory(name string) (Factory, []string, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if f, ok := builtins[name]; ok {
		return f, nil, true
	}
	if f, ok := c.custom[name]; ok {
		return f, nil, true
	}
	return nil, names(builtins, c.custom), false
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
