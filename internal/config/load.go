package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// EnvPrefix starts every environment variable syncgate reads.
const EnvPrefix = "SYNCGATE_"

// EnvConfig names the config file when --config is not given.
const EnvConfig = EnvPrefix + "CONFIG"

// Load builds the configuration for a command whose only flags are the config
// flags (see AddFlags): defaults < YAML file < SYNCGATE_* environment <
// flags, then Validate. args excludes the program name; env has the
// os.Environ form "KEY=value".
//
// warnings lists environment variables that start with SYNCGATE_ but name
// no setting (a typo, most likely); the caller decides how to show them.
// Flag parse errors, including -h (errors.Is(err, flag.ErrHelp)), are
// returned, never printed. A command that wants usage text or flags of its own
// calls AddFlags on its own FlagSet instead.
func Load(args, env []string) (cfg Config, warnings []string, err error) {
	fs := flag.NewFlagSet("syncgate", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return Config{}, nil, fmt.Errorf("config: %w", err)
	}
	if fs.NArg() > 0 {
		return Config{}, nil, fmt.Errorf("config: unexpected argument %q", fs.Arg(0))
	}
	return f.Load(env)
}

// Flags are the config flags defined on a FlagSet by AddFlags.
type Flags struct {
	fs     *flag.FlagSet
	config *string
	values map[string]flagValue // by flag name
}

type flagValue struct {
	field field
	value *string
}

// flagKeys are the settings that have a flag; the flag name is derived from
// the yaml path. Everything else is set in the file or the environment.
func flagKeys() []struct{ path, usage string } {
	return []struct{ path, usage string }{
		{"listen", "HTTP/WebSocket listen address"},
		{"data_dir", "directory of the embedded database and the generated JWT secret"},
		{"node", "node name, unique within a cluster"},
		{"log_level", "log level: debug, info, warn or error"},
		{"log_format", "log format: text or json"},
		{"auth.secret", "HS256 JWT secret; visible in process lists, so prefer the variable or auth.secret_file"},
		{"mongo.uri", "MongoDB URI; switches storage from embedded bbolt to MongoDB"},
		{"redis.addr", "Redis host:port; switches fan-out and presence to Redis"},
	}
}

// AddFlags defines --config and the config flags on fs. Call Flags.Load
// after fs.Parse. Flag defaults shown in usage are those of Default; a flag
// overrides the file and the environment only when it is given.
func AddFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs, values: map[string]flagValue{}}
	f.config = fs.String("config", "", "YAML config file (also "+EnvConfig+")")
	def := reflect.ValueOf(Default())
	byPath := fieldsByPath()
	for _, k := range flagKeys() {
		fd := byPath[k.path]
		v := fs.String(fd.flagName(), fmt.Sprint(def.FieldByIndex(fd.index).Interface()), k.usage+" ("+fd.envName()+")")
		f.values[fd.flagName()] = flagValue{fd, v}
	}
	return f
}

// Load builds the configuration from the parsed flags and env (see the
// package Load for the precedence and the warnings).
func (f *Flags) Load(env []string) (cfg Config, warnings []string, err error) {
	if !f.fs.Parsed() {
		return Config{}, nil, errors.New("config: Flags.Load called before the FlagSet was parsed")
	}
	vars := envMap(env)
	cfg = Default()

	path := vars[EnvConfig]
	if given(f.fs, "config") {
		path = *f.config
	}
	if path != "" {
		if err := loadFile(path, &cfg); err != nil {
			return Config{}, nil, err
		}
	}

	warnings, err = applyEnv(&cfg, vars)
	if err != nil {
		return Config{}, warnings, err
	}

	var errs []error
	f.fs.Visit(func(fl *flag.Flag) {
		fv, ok := f.values[fl.Name]
		if !ok {
			return // --config, or a flag of the command
		}
		if err := fv.field.set(&cfg, *fv.value); err != nil {
			errs = append(errs, fmt.Errorf("config: flag --%s=%q: %w", fl.Name, *fv.value, err))
		}
	})
	if err := errors.Join(errs...); err != nil {
		return Config{}, warnings, err
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, warnings, err
	}
	return cfg, warnings, nil
}

func given(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(fl *flag.Flag) { found = found || fl.Name == name })
	return found
}

// ---- the file ----

// loadFile merges the YAML file at path into cfg. Keys the file leaves out
// keep their current value. Unknown keys are errors naming the key and line.
func loadFile(path string, cfg *Config) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: read config file: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty file: all defaults
		}
		return fmt.Errorf("config: %s: %w", path, err)
	}
	if err := dec.Decode(new(yaml.Node)); !errors.Is(err, io.EOF) {
		return fmt.Errorf("config: %s: holds more than one YAML document", path)
	}
	if err := errors.Join(checkTree(path, &doc, reflect.TypeFor[Config](), "")...); err != nil {
		return err
	}
	// The walk above gives better messages; KnownFields stays as a backstop.
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	if err := strict.Decode(cfg); err != nil {
		return fmt.Errorf("config: %s: %w", path, err)
	}
	return nil
}

// unknownKeys walks the YAML tree alongside the Go type and reports every
// mapping key that names no field, with its full path and line.
func checkTree(file string, n *yaml.Node, t reflect.Type, prefix string) []error {
	if n == nil {
		return nil
	}
	var errs []error
	switch {
	case n.Kind == yaml.DocumentNode:
		for _, c := range n.Content {
			errs = append(errs, checkTree(file, c, t, prefix)...)
		}
	case n.Kind == yaml.AliasNode:
		errs = append(errs, checkTree(file, n.Alias, t, prefix)...)
	case n.Kind == yaml.MappingNode && t.Kind() == reflect.Map && t.Key().Kind() == reflect.String &&
		(t.Elem().Kind() == reflect.Struct || t.Elem().Kind() == reflect.Map):
		// A map of sections (collections: name -> settings): check each value
		// as its own section, so an unknown key inside one is named.
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			errs = append(errs, checkTree(file, v, t.Elem(), joinPath(prefix, k.Value))...)
		}
	case t.Kind() != reflect.Struct && t.Kind() != reflect.Slice || isDuration(t):
		// A leaf: decode it alone to name the key in a type error.
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			var te *yaml.TypeError
			msg := err.Error()
			if errors.As(err, &te) && len(te.Errors) > 0 {
				_, msg, _ = strings.Cut(te.Errors[0], ": ") // drop "line N: "
			}
			if isDuration(t) {
				msg += " (a duration needs a unit, e.g. 30s)"
			}
			errs = append(errs, fmt.Errorf("config: %s:%d: %s: %s", file, n.Line, prefix, msg))
		}
	case n.Kind == yaml.MappingNode && t.Kind() == reflect.Struct:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Tag == "!!merge" {
				if v.Kind == yaml.SequenceNode {
					for _, m := range v.Content {
						errs = append(errs, checkTree(file, m, t, prefix)...)
					}
				} else {
					errs = append(errs, checkTree(file, v, t, prefix)...)
				}
				continue
			}
			sf, ok := structField(t, k.Value)
			if !ok {
				var known []string
				for i := range t.NumField() {
					known = append(known, joinPath(prefix, yamlName(t.Field(i))))
				}
				hint := didYouMean(joinPath(prefix, k.Value), known)
				if hint == "" {
					hint = " (known: " + strings.Join(known, ", ") + ")"
				}
				errs = append(errs, fmt.Errorf("config: %s:%d: unknown key %q%s", file, k.Line, joinPath(prefix, k.Value), hint))
				continue
			}
			errs = append(errs, checkTree(file, v, sf.Type, joinPath(prefix, k.Value))...)
		}
	case n.Kind == yaml.SequenceNode && t.Kind() == reflect.Slice:
		for i, item := range n.Content {
			errs = append(errs, checkTree(file, item, t.Elem(), fmt.Sprintf("%s[%d]", prefix, i))...)
		}
	}
	// Anything else (a section given a scalar, null) is left to the decoder.
	return errs
}

func structField(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		if f := t.Field(i); yamlName(f) == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// ---- the environment ----

// envMap keeps the SYNCGATE_ variables of env; the last of duplicates wins,
// as in os/exec.
func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(k, EnvPrefix) {
			m[k] = v
		}
	}
	return m
}

// applyEnv sets every field whose variable is present in vars (even to an
// empty value). It returns warnings for SYNCGATE_ variables that name no
// setting and one error listing every value that does not parse.
func applyEnv(cfg *Config, vars map[string]string) (warnings []string, err error) {
	byEnv := map[string]field{}
	known := []string{EnvConfig}
	for _, f := range fields() {
		byEnv[f.envName()] = f
		known = append(known, f.envName())
	}
	names := make([]string, 0, len(vars))
	for k := range vars {
		names = append(names, k)
	}
	sort.Strings(names)
	var errs []error
	for _, name := range names {
		if name == EnvConfig {
			continue
		}
		f, ok := byEnv[name]
		if !ok {
			warnings = append(warnings, fmt.Sprintf("unknown environment variable %s%s", name, didYouMean(name, known)))
			continue
		}
		if !f.scalar() {
			warnings = append(warnings, fmt.Sprintf("environment variable %s is ignored: %s can only be set in the config file", name, f.path))
			continue
		}
		if err := f.set(cfg, vars[name]); err != nil {
			errs = append(errs, fmt.Errorf("config: environment %s=%q: %w", name, vars[name], err))
		}
	}
	return warnings, errors.Join(errs...)
}

// ---- reflection over Config ----

func isDuration(t reflect.Type) bool { return t == reflect.TypeFor[time.Duration]() }

// field is one leaf setting of Config.
type field struct {
	path  string // yaml path, e.g. "limits.max_batch"
	index []int  // for reflect.Value.FieldByIndex
	typ   reflect.Type
}

// fields lists the leaf settings of Config in declaration order. Nested
// structs are sections; anything else (including slices) is a leaf.
func fields() []field {
	var out []field
	var walk func(t reflect.Type, prefix string, index []int)
	walk = func(t reflect.Type, prefix string, index []int) {
		for i := range t.NumField() {
			sf := t.Field(i)
			idx := append(slices.Clone(index), i)
			p := joinPath(prefix, yamlName(sf))
			if sf.Type.Kind() == reflect.Struct && !isDuration(sf.Type) {
				walk(sf.Type, p, idx)
				continue
			}
			out = append(out, field{path: p, index: idx, typ: sf.Type})
		}
	}
	walk(reflect.TypeFor[Config](), "", nil)
	return out
}

func fieldsByPath() map[string]field {
	m := map[string]field{}
	for _, f := range fields() {
		m[f.path] = f
	}
	return m
}

// envName is SYNCGATE_ plus the upper-cased path with '_' between parts.
func (f field) envName() string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(f.path, ".", "_"))
}

// flagName is the path with '-' for '.' and '_'.
func (f field) flagName() string {
	return strings.NewReplacer(".", "-", "_", "-").Replace(f.path)
}

// scalar reports whether the field can be set from one string.
func (f field) scalar() bool {
	if isDuration(f.typ) {
		return true
	}
	switch f.typ.Kind() {
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return true
	case reflect.Slice: // a list of strings is comma-separated
		return f.typ.Elem().Kind() == reflect.String
	}
	return false
}

// set parses s into the field of cfg. The error says what was wanted; it
// does not repeat s (the caller names the source and the value).
func (f field) set(cfg *Config, s string) error {
	v := reflect.ValueOf(cfg).Elem().FieldByIndex(f.index)
	switch {
	case isDuration(f.typ):
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%s wants a duration such as 30s or 1h30m: %w", f.path, err)
		}
		v.SetInt(int64(d))
	case f.typ.Kind() == reflect.String:
		v.SetString(s)
	case f.typ.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%s wants true or false: %w", f.path, numErr(err))
		}
		v.SetBool(b)
	case f.typ.Kind() == reflect.Slice && f.scalar():
		// "a, b,c" is [a b c]; empty items are dropped, so "" is the
		// empty list.
		list := reflect.MakeSlice(f.typ, 0, 0)
		for item := range strings.SplitSeq(s, ",") {
			if item = strings.TrimSpace(item); item != "" {
				list = reflect.Append(list, reflect.ValueOf(item).Convert(f.typ.Elem()))
			}
		}
		v.Set(list)
	case f.scalar(): // the int kinds
		n, err := strconv.ParseInt(s, 10, f.typ.Bits())
		if err != nil {
			return fmt.Errorf("%s wants an integer: %w", f.path, numErr(err))
		}
		v.SetInt(n)
	default:
		return fmt.Errorf("%s can only be set in the config file", f.path)
	}
	return nil
}

// numErr drops strconv's repetition of the input from its error.
func numErr(err error) error {
	var ne *strconv.NumError
	if errors.As(err, &ne) {
		return ne.Err
	}
	return err
}

func yamlName(sf reflect.StructField) string {
	name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
	if name == "" {
		return strings.ToLower(sf.Name) // yaml.v3's own rule; a test requires tags
	}
	return name
}

func joinPath(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// didYouMean suggests the closest of known to s when it is close enough to
// be a typo.
func didYouMean(s string, known []string) string {
	best, bestD := "", 4 // at most 3 edits
	for _, k := range known {
		if d := editDistance(strings.ToLower(s), strings.ToLower(k)); d < bestD {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return " (did you mean " + best + "?)"
}

// editDistance is the Levenshtein distance between a and b (bytes).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
