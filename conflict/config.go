package conflict

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// CollectionConfig is one entry of the config's collections section:
//
//	collections:
//	  reading_progress: { fields: { progress: max } }
//	  user_content:     { resolver: manual, max_doc_bytes: 65536 }
//	  "*":              { resolver: lww, deletes: delete-wins }
//
// Every entry stands alone: a collection's entry does not inherit from
// "*", which only serves collections without an entry.
type CollectionConfig struct {
	// Resolver is a built-in mode (lww, server-wins, client-wins, manual)
	// or a name registered in the Catalog. "" means lww.
	Resolver string `yaml:"resolver" json:"resolver,omitempty"`
	// Fields maps top-level field names to rules (lww, max, min, union,
	// counter). Only lww collections take them.
	Fields map[string]string `yaml:"fields" json:"fields,omitempty"`
	// Deletes is delete-wins (the default) or update-wins. It applies to
	// lww and is passed to custom resolvers; server-wins, client-wins and
	// manual decide deletes themselves and refuse it.
	Deletes string `yaml:"deletes" json:"deletes,omitempty"`
	// MaxDocBytes and MaxDepth limit documents of the collection; 0 means
	// the server-wide limit. See Collection.
	MaxDocBytes int `yaml:"max_doc_bytes" json:"max_doc_bytes,omitempty"`
	MaxDepth    int `yaml:"max_depth" json:"max_depth,omitempty"`
}

// Build makes a Registry from the collections section of the config,
// looking resolver names up in cat (nil: the built-ins only).
//
// An empty or nil map gives NewRegistry(nil): lww for every collection.
// Otherwise the registry knows exactly the collections named, plus every
// other collection when there is a "*" entry (see Registry.Collection).
//
// Build checks everything and reports every problem at once (errors.Join),
// each as "conflict: <key path>: <what is wrong>", naming the bad value and
// the allowed ones, e.g.
//
//	conflict: collections.reading_progress.fields.progress: unknown rule "maxx" (known: counter, lww, max, min, union)
//
// An unknown resolver name matches errors.Is(err, ErrUnknownResolver).
func Build(cols map[string]CollectionConfig, cat *Catalog) (*Registry, error) {
	if len(cols) == 0 {
		return NewRegistry(nil), nil
	}
	if cat == nil {
		cat = NewCatalog()
	}
	var errs []error
	table := make(map[string]Collection, len(cols))
	for _, name := range slices.Sorted(maps.Keys(cols)) {
		c, cerrs := buildCollection(name, cols[name], cat)
		if len(cerrs) > 0 {
			errs = append(errs, cerrs...)
			continue
		}
		table[name] = c
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	r := &Registry{}
	r.table.Store(&table)
	return r, nil
}

// configError is one problem in the config; kind (if any) is what it wraps.
type configError struct {
	msg  string
	kind error
}

func (e *configError) Error() string { return e.msg }
func (e *configError) Unwrap() error { return e.kind }

func pathErr(path, format string, args ...any) error {
	return &configError{msg: "conflict: " + path + ": " + fmt.Sprintf(format, args...)}
}

// keyPath renders a config key: plain when it is an identifier (or the
// "*" collection), quoted otherwise.
func keyPath(prefix, key string) string {
	if (key == DefaultCollection && prefix == "collections") || validName(key, 1<<30) {
		return prefix + "." + key
	}
	return prefix + "." + strconv.Quote(key)
}

func buildCollection(name string, cfg CollectionConfig, cat *Catalog) (Collection, []error) {
	path := keyPath("collections", name)
	var errs []error
	if name != DefaultCollection && !validName(name, 64) {
		errs = append(errs, pathErr(path,
			`invalid collection name %q (want 1-64 letters, digits or '_', not starting with a digit; or "*" for every other collection)`, name))
	}

	resolver := cfg.Resolver
	if resolver == "" {
		resolver = string(ModeLWW)
	}
	factory, known, ok := cat.factory(resolver)
	if !ok {
		errs = append(errs, &configError{
			msg: fmt.Sprintf("conflict: %s.resolver: unknown resolver %q (known: %s)",
				path, resolver, strings.Join(known, ", ")),
			kind: ErrUnknownResolver,
		})
	}
	ownDeletes := resolver == string(ModeServerWins) || resolver == string(ModeClientWins) || resolver == string(ModeManual)

	var deletes DeletePolicy
	if cfg.Deletes != "" {
		p, err := parseDeletePolicy(DeletePolicy(cfg.Deletes))
		switch {
		case err != nil:
			errs = append(errs, pathErr(path+".deletes", "unknown delete policy %q (known: %s, %s)", cfg.Deletes, DeleteWins, UpdateWins))
		case ownDeletes:
			errs = append(errs, pathErr(path+".deletes",
				"resolver %q decides deletes itself, so deletes: %s has no effect (deletes applies to lww and custom resolvers)", resolver, cfg.Deletes))
		default:
			deletes = p
		}
	}

	var fields map[string]FieldRule
	if len(cfg.Fields) > 0 {
		if ok && resolver != string(ModeLWW) {
			errs = append(errs, pathErr(path+".fields",
				"field rules apply to resolver lww only, and this collection uses %q (remove fields, or use resolver lww)", resolver))
		}
		fields = make(map[string]FieldRule, len(cfg.Fields))
		for _, f := range slices.Sorted(maps.Keys(cfg.Fields)) {
			fpath := keyPath(path+".fields", f)
			if reason := checkFieldName(f); reason != "" {
				errs = append(errs, pathErr(fpath, "invalid field name %q: %s", f, reason))
				continue
			}
			r, err := parseRule(FieldRule(cfg.Fields[f]))
			if err != nil {
				errs = append(errs, pathErr(fpath, "%v", err))
				continue
			}
			fields[f] = r
		}
	}

	if cfg.MaxDocBytes < 0 {
		errs = append(errs, pathErr(path+".max_doc_bytes", "must be 0 (the server-wide limit) or more, not %d", cfg.MaxDocBytes))
	}
	if cfg.MaxDepth < 0 {
		errs = append(errs, pathErr(path+".max_depth", "must be 0 (the server-wide limit) or more, not %d", cfg.MaxDepth))
	}
	if len(errs) > 0 {
		return Collection{}, errs
	}

	res, err := factory(Options{Delete: deletes, Fields: fields, Collection: name})
	switch {
	case err != nil:
		return Collection{}, []error{pathErr(path+".resolver", "resolver %q: %v", resolver, err)}
	case res == nil:
		return Collection{}, []error{pathErr(path+".resolver", "resolver %q: factory returned no resolver", resolver)}
	}
	return Collection{Resolver: res, MaxDocBytes: cfg.MaxDocBytes, MaxDepth: cfg.MaxDepth}, nil
}

// validName reports whether s matches [A-Za-z_][A-Za-z0-9_]{0,max-1}.
func validName(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
