package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultIsValid(t *testing.T) {
	d := Default()
	if err := d.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	if !validNode(d.Node) {
		t.Fatalf("default node %q is not a valid node name", d.Node)
	}
	want := map[string]any{
		"listen": "127.0.0.1:8080", "data_dir": "./data", "log_level": "info", "log_format": "text",
		"auth.issuer": "syncgate", "auth.audience": "syncgate", "auth.leeway": 30 * time.Second,
		"auth.secret": "", "auth.secret_file": "",
		"mongo.uri": "", "redis.addr": "",
		"limits.max_message_bytes": 1 << 20, "limits.outbound_queue_bytes": 4 << 20,
		"limits.max_batch": 1000, "limits.pull_limit": 500, "limits.max_pull_limit": 5000,
		"limits.max_doc_bytes": 256 << 10, "limits.max_depth": 32,
		"timing.hello_timeout": 10 * time.Second, "timing.ping_interval": 25 * time.Second,
		"timing.pong_timeout": 60 * time.Second, "timing.write_timeout": 10 * time.Second,
		"timing.shutdown_timeout": 30 * time.Second,
		"history.retention":       720 * time.Hour, "history.compact_every": time.Hour, "history.receipt_ttl": 24 * time.Hour,
		"sessions.ttl": 2 * time.Hour, "sessions.remember_ttl": 24 * time.Hour, "sessions.max_per_user": 10,
		"sessions.sweep_every": time.Minute,
		"presence.heartbeat":   25 * time.Second, "presence.ttl": 60 * time.Second, "presence.sweep_every": 5 * time.Second,
		"presence.awareness_max_bytes": 1024, "presence.awareness_interval": 100 * time.Millisecond,
		"presence.typing_interval": time.Second, "presence.typing_ttl": 3 * time.Second, "presence.max_rooms": 32,
	}
	byPath := fieldsByPath()
	v := reflect.ValueOf(d)
	for path, w := range want {
		f, ok := byPath[path]
		if !ok {
			t.Errorf("no setting %s", path)
			continue
		}
		if got := v.FieldByIndex(f.index).Interface(); got != w {
			t.Errorf("default %s = %v, want %v", path, got, w)
		}
	}
	if d.SecretPath() != filepath.Join("data", "jwt.secret") {
		t.Errorf("default SecretPath = %q", d.SecretPath())
	}
	d.Auth.SecretFile = "/run/secrets/jwt"
	if d.SecretPath() != "/run/secrets/jwt" {
		t.Errorf("SecretPath with secret_file = %q", d.SecretPath())
	}
}

// TestNaming pins the mechanical naming: snake_case yaml tags on every field,
// unique env and flag names, flags only for existing settings.
func TestNaming(t *testing.T) {
	snake := regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	var check func(reflect.Type)
	check = func(rt reflect.Type) {
		for i := range rt.NumField() {
			sf := rt.Field(i)
			tag, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
			if !snake.MatchString(tag) {
				t.Errorf("%s.%s: yaml tag %q is not snake_case", rt.Name(), sf.Name, tag)
			}
			switch {
			case sf.Type.Kind() == reflect.Struct && !isDuration(sf.Type):
				check(sf.Type)
			case sf.Type.Kind() == reflect.Slice && sf.Type.Elem().Kind() == reflect.Struct:
				check(sf.Type.Elem())
			}
		}
	}
	check(reflect.TypeFor[Config]())

	envs := map[string]string{EnvConfig: "(config file)"}
	for _, f := range fields() {
		if prev, dup := envs[f.envName()]; dup {
			t.Errorf("%s and %s both map to %s", prev, f.path, f.envName())
		}
		envs[f.envName()] = f.path
	}
	for path, env := range map[string]string{
		"listen": "SYNCGATE_LISTEN", "data_dir": "SYNCGATE_DATA_DIR", "auth.issuer": "SYNCGATE_AUTH_ISSUER",
		"limits.max_message_bytes": "SYNCGATE_LIMITS_MAX_MESSAGE_BYTES", "timing.ping_interval": "SYNCGATE_TIMING_PING_INTERVAL",
		"mongo.uri": "SYNCGATE_MONGO_URI", "redis.addr": "SYNCGATE_REDIS_ADDR",
		"media.max_bytes": "SYNCGATE_MEDIA_MAX_BYTES", "media.allowed_types": "SYNCGATE_MEDIA_ALLOWED_TYPES",
		"media.part_bytes": "SYNCGATE_MEDIA_PART_BYTES", "media.upload_ttl": "SYNCGATE_MEDIA_UPLOAD_TTL",
	} {
		if got := fieldsByPath()[path].envName(); got != env {
			t.Errorf("env name of %s = %s, want %s", path, got, env)
		}
	}

	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	AddFlags(fs)
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	want := []string{"auth-secret", "config", "data-dir", "listen", "log-format", "log-level", "mongo-uri", "node", "redis-addr"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("flags = %v, want %v", names, want)
	}
}

// TestExampleFile keeps testdata/syncgate.yaml complete and equal to Default.
func TestExampleFile(t *testing.T) {
	cfg, warnings, err := Load([]string{"--config", "testdata/syncgate.yaml"}, nil)
	if err != nil || len(warnings) > 0 {
		t.Fatalf("Load(example) = %v, %v", warnings, err)
	}
	if len(cfg.Auth.Keys) == 0 {
		cfg.Auth.Keys = nil // "keys: []"
	}
	if d := Default(); !reflect.DeepEqual(cfg, d) {
		t.Errorf("example file differs from Default:\n got %+v\nwant %+v", cfg, d)
	}
	data, err := os.ReadFile("testdata/syncgate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	present := map[string]bool{}
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		if n.Kind == yaml.DocumentNode {
			walk(n.Content[0], prefix)
			return
		}
		for i := 0; n.Kind == yaml.MappingNode && i+1 < len(n.Content); i += 2 {
			p := joinPath(prefix, n.Content[i].Value)
			present[p] = true
			walk(n.Content[i+1], p)
		}
	}
	walk(&doc, "")
	for _, f := range fields() {
		if !present[f.path] && f.path != "node" { // node defaults to the host name
			t.Errorf("testdata/syncgate.yaml does not list %s", f.path)
		}
	}
}

func TestPrecedence(t *testing.T) {
	const file = `
listen: 0.0.0.0:1000
data_dir: /from/file
log_level: warn
limits:
  max_batch: 10
timing:
  ping_interval: 5s
mongo:
  uri: mongodb://file:27017
`
	otherFile := "listen: 0.0.0.0:3000\n"
	type want struct {
		listen, dataDir, logLevel, mongoURI, redisAddr, secret string
		maxBatch, pullLimit                                    int
		ping                                                   time.Duration
	}
	def := want{"127.0.0.1:8080", "./data", "info", "", "", "", 1000, 500, 25 * time.Second}
	tests := []struct {
		name string
		file bool // pass the file with --config
		env  []string
		args []string
		want want
	}{
		{name: "defaults", want: def},
		{name: "file over defaults", file: true,
			want: want{"0.0.0.0:1000", "/from/file", "warn", "mongodb://file:27017", "", "", 10, 500, 5 * time.Second}},
		{name: "env over file", file: true,
			env: []string{"SYNCGATE_LISTEN=0.0.0.0:2000", "SYNCGATE_LIMITS_MAX_BATCH=20", "SYNCGATE_TIMING_PING_INTERVAL=7s",
				"SYNCGATE_DATA_DIR=/from/env", "SYNCGATE_MONGO_URI=", "PATH=/bin", "HOME=/root"},
			want: want{"0.0.0.0:2000", "/from/env", "warn", "", "", "", 20, 500, 7 * time.Second}},
		{name: "flags over env", file: true,
			env:  []string{"SYNCGATE_LISTEN=0.0.0.0:2000", "SYNCGATE_DATA_DIR=/from/env", "SYNCGATE_LOG_LEVEL=debug"},
			args: []string{"--listen", "0.0.0.0:3000", "--data-dir=/from/flag", "--mongo-uri", "mongodb://flag", "--redis-addr", "r:6379"},
			want: want{"0.0.0.0:3000", "/from/flag", "debug", "mongodb://flag", "r:6379", "", 10, 500, 5 * time.Second}},
		{name: "a flag given with its default value still wins", file: true,
			env:  []string{"SYNCGATE_LOG_LEVEL=debug", "SYNCGATE_LISTEN=0.0.0.0:2000"},
			args: []string{"--log-level=info", "--listen=127.0.0.1:8080"},
			want: want{"127.0.0.1:8080", "/from/file", "info", "mongodb://file:27017", "", "", 10, 500, 5 * time.Second}},
		{name: "flags not given do not override", env: []string{"SYNCGATE_LOG_LEVEL=error"},
			want: want{"127.0.0.1:8080", "./data", "error", "", "", "", 1000, 500, 25 * time.Second}},
		{name: "last duplicate env wins", env: []string{"SYNCGATE_LIMITS_MAX_BATCH=5", "SYNCGATE_LIMITS_MAX_BATCH=6"},
			want: want{"127.0.0.1:8080", "./data", "info", "", "", "", 6, 500, 25 * time.Second}},
		{name: "auth secret from flag", args: []string{"--auth-secret", strings.Repeat("s", 32)},
			want: want{"127.0.0.1:8080", "./data", "info", "", "", strings.Repeat("s", 32), 1000, 500, 25 * time.Second}},
		{name: "auth secret from env", env: []string{"SYNCGATE_AUTH_SECRET=" + strings.Repeat("e", 40)},
			want: want{"127.0.0.1:8080", "./data", "info", "", "", strings.Repeat("e", 40), 1000, 500, 25 * time.Second}},
	}
	path := writeFile(t, "syncgate.yaml", file)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.file {
				args = append([]string{"--config", path}, args...)
			}
			cfg, warnings, err := Load(args, tc.env)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if len(warnings) > 0 {
				t.Errorf("warnings: %v", warnings)
			}
			got := want{cfg.Listen, cfg.DataDir, cfg.LogLevel, cfg.Mongo.URI, cfg.Redis.Addr, cfg.Auth.Secret,
				cfg.Limits.MaxBatch, cfg.Limits.PullLimit, cfg.Timing.PingInterval}
			if got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}

	t.Run("SYNCGATE_CONFIG names the file, --config beats it", func(t *testing.T) {
		other := writeFile(t, "other.yaml", otherFile)
		cfg, _, err := Load(nil, []string{"SYNCGATE_CONFIG=" + path})
		if err != nil || cfg.Listen != "0.0.0.0:1000" {
			t.Fatalf("SYNCGATE_CONFIG: listen %q, err %v", cfg.Listen, err)
		}
		cfg, _, err = Load([]string{"--config", other}, []string{"SYNCGATE_CONFIG=" + path})
		if err != nil || cfg.Listen != "0.0.0.0:3000" {
			t.Fatalf("--config over SYNCGATE_CONFIG: listen %q, err %v", cfg.Listen, err)
		}
	})

	t.Run("sessions section from file and env", func(t *testing.T) {
		f := writeFile(t, "s.yaml", "sessions:\n  ttl: 1h\n  max_per_user: 3\n")
		cfg, warnings, err := Load([]string{"--config", f}, []string{"SYNCGATE_SESSIONS_MAX_PER_USER=5", "SYNCGATE_SESSIONS_REMEMBER_TTL=72h", "SYNCGATE_SESSIONS_SWEEP_EVERY=30s"})
		want := Sessions{TTL: time.Hour, RememberTTL: 72 * time.Hour, MaxPerUser: 5, SweepEvery: 30 * time.Second}
		if err != nil || len(warnings) > 0 || cfg.Sessions != want {
			t.Fatalf("sessions = %+v (warnings %v, err %v), want %+v", cfg.Sessions, warnings, err, want)
		}
		if _, _, err := Load(nil, []string{"SYNCGATE_SESSIONS_TTL=forever"}); err == nil || !strings.Contains(err.Error(), "sessions.ttl wants a duration") {
			t.Fatalf("bad SYNCGATE_SESSIONS_TTL: %v", err)
		}
	})
}

func TestFileForms(t *testing.T) {
	tests := []struct {
		name, yaml string
		check      func(Config) bool
	}{
		{"empty file", "", func(c Config) bool { return reflect.DeepEqual(c, Default()) }},
		{"comments only", "# nothing\n", func(c Config) bool { return reflect.DeepEqual(c, Default()) }},
		{"null values keep defaults", "listen:\nauth:\nlimits:\n  max_batch:\n", func(c Config) bool { return reflect.DeepEqual(c, Default()) }},
		{"partial section keeps the rest", "limits:\n  max_depth: 8\n", func(c Config) bool {
			return c.Limits.MaxDepth == 8 && c.Limits.MaxBatch == 1000 && c.Limits.MaxMessageBytes == 1<<20
		}},
		{"anchors and merge keys", "x: &t\n  hello_timeout: 3s\ntiming:\n  <<: *t\n  write_timeout: 4s\n", nil},
		{"keys", "auth:\n  keys:\n    - id: a\n      alg: HS256\n      secret: " + strings.Repeat("k", 32) + "\n", func(c Config) bool {
			return len(c.Auth.Keys) == 1 && c.Auth.Keys[0].ID == "a" && c.Auth.Keys[0].Alg == "HS256"
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _, err := Load([]string{"--config", writeFile(t, "c.yaml", tc.yaml)}, nil)
			if tc.check == nil { // expected to fail: "x" is not a key
				if err == nil || !strings.Contains(err.Error(), `unknown key "x"`) {
					t.Fatalf("err = %v, want unknown key x", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !tc.check(cfg) {
				t.Errorf("unexpected config %+v", cfg)
			}
		})
	}

	t.Run("merge keys are checked too", func(t *testing.T) {
		y := "timing:\n  <<: {hello_timeout: 3s, helo: 1s}\n"
		_, _, err := Load([]string{"--config", writeFile(t, "c.yaml", y)}, nil)
		if err == nil || !strings.Contains(err.Error(), `unknown key "timing.helo"`) {
			t.Fatalf("err = %v", err)
		}
		y = "timing:\n  <<: {hello_timeout: 3s}\n  write_timeout: 4s\n"
		cfg, _, err := Load([]string{"--config", writeFile(t, "c.yaml", y)}, nil)
		if err != nil || cfg.Timing.HelloTimeout != 3*time.Second || cfg.Timing.WriteTimeout != 4*time.Second {
			t.Fatalf("merge: %+v %v", cfg.Timing, err)
		}
	})
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string // written to a file passed with --config when non-empty
		env  []string
		args []string
		want []string // substrings of the error
		is   error
	}{
		{name: "unknown top-level key", yaml: "listen: x:1\nlisten_addr: 1\n",
			want: []string{`:2: unknown key "listen_addr"`, `(known: listen, data_dir, node,`}},
		{name: "typo gets a suggestion", yaml: "lisen: x:1\n",
			want: []string{`:1: unknown key "lisen" (did you mean listen?)`}},
		{name: "unknown nested key", yaml: "limits:\n  max_batch: 3\n  max_batchh: 4\n",
			want: []string{`:3: unknown key "limits.max_batchh"`, "did you mean limits.max_batch?"}},
		{name: "unknown key in a list item", yaml: "auth:\n  keys:\n    - id: a\n      algo: HS256\n",
			want: []string{`:4: unknown key "auth.keys[0].algo"`}},
		{name: "every unknown key is reported", yaml: "foo: 1\nbar: 2\n",
			want: []string{`unknown key "foo"`, `unknown key "bar"`}},
		{name: "wrong type in file", yaml: "limits:\n  max_batch: lots\n",
			want: []string{".yaml:2: limits.max_batch: cannot unmarshal !!str `lots` into int"}},
		{name: "bare number as duration", yaml: "timing:\n  ping_interval: 30\n",
			want: []string{".yaml:2: timing.ping_interval: cannot unmarshal !!int `30` into time.Duration (a duration needs a unit, e.g. 30s)"}},
		{name: "bad duration string", yaml: "timing:\n  ping_interval: soon\n",
			want: []string{".yaml:2: timing.ping_interval: ", "soon"}},
		{name: "bad value in a list item", yaml: "auth:\n  keys:\n    - id: [a]\n",
			want: []string{".yaml:3: auth.keys[0].id: cannot unmarshal !!seq into string"}},
		{name: "section given a scalar", yaml: "limits: 5\n",
			want: []string{"config: ", "line 1", "!!int `5`"}},
		{name: "type errors and unknown keys together", yaml: "limits:\n  max_batch: x\n  nope: 1\n",
			want: []string{"limits.max_batch: cannot unmarshal", `unknown key "limits.nope"`}},
		{name: "syntax error", yaml: "listen: [\n", want: []string{"config: ", ".yaml"}},
		{name: "two documents", yaml: "listen: a:1\n---\nlisten: b:2\n", want: []string{"more than one YAML document"}},
		{name: "missing file", args: []string{"--config", "/nonexistent/syncgate.yaml"},
			want: []string{"config: read config file", "/nonexistent/syncgate.yaml"}, is: os.ErrNotExist},
		{name: "bad env int", env: []string{"SYNCGATE_LIMITS_MAX_BATCH=abc"},
			want: []string{`SYNCGATE_LIMITS_MAX_BATCH="abc"`, "limits.max_batch wants an integer"}},
		{name: "env int out of range", env: []string{"SYNCGATE_REDIS_DB=99999999999999999999"},
			want: []string{"SYNCGATE_REDIS_DB", "out of range"}},
		{name: "bad env duration", env: []string{"SYNCGATE_TIMING_PING_INTERVAL=25"},
			want: []string{`SYNCGATE_TIMING_PING_INTERVAL="25"`, "wants a duration", "missing unit"}},
		{name: "every bad env value is reported", env: []string{"SYNCGATE_LIMITS_MAX_BATCH=x", "SYNCGATE_AUTH_LEEWAY=y"},
			want: []string{"SYNCGATE_LIMITS_MAX_BATCH", "SYNCGATE_AUTH_LEEWAY"}},
		{name: "validation runs", env: []string{"SYNCGATE_LIMITS_MAX_MESSAGE_BYTES=12"},
			want: []string{"config: limits.max_message_bytes must be between 1KiB and 64MiB, got 12"}},
		{name: "unknown flag", args: []string{"--listne", "x"}, want: []string{"config: ", "listne"}},
		{name: "help", args: []string{"-h"}, is: flag.ErrHelp},
		{name: "positional argument", args: []string{"serve"}, want: []string{`unexpected argument "serve"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.yaml != "" {
				args = append([]string{"--config", writeFile(t, "bad.yaml", tc.yaml)}, args...)
			}
			cfg, _, err := Load(args, tc.env)
			if err == nil {
				t.Fatalf("Load succeeded: %+v", cfg)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			if !reflect.DeepEqual(cfg, Config{}) {
				t.Errorf("a failed Load returned a config")
			}
		})
	}
}

func TestEnvWarnings(t *testing.T) {
	env := []string{
		"SYNCGATE_LISTN=0.0.0.0:1",     // typo
		"SYNCGATE_AUTH_KEYS=whatever",  // file-only
		"SYNCGATE_SOMETHING_ELSE=1",    // unknown, nothing close
		"SYNCGATE_CONFIG=",             // known, empty: no file
		"SYNCGATE_LISTEN=0.0.0.0:9000", // known
		"OTHER_LISTN=1", "NOEQUALS",    // not ours / malformed: ignored
	}
	cfg, warnings, err := Load(nil, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "0.0.0.0:9000" {
		t.Errorf("listen = %q", cfg.Listen)
	}
	want := []string{
		"environment variable SYNCGATE_AUTH_KEYS is ignored: auth.keys can only be set in the config file",
		"unknown environment variable SYNCGATE_LISTN (did you mean SYNCGATE_LISTEN?)",
		"unknown environment variable SYNCGATE_SOMETHING_ELSE",
	}
	if !reflect.DeepEqual(warnings, want) {
		t.Errorf("warnings:\n got %q\nwant %q", warnings, want)
	}
}

func TestMediaSettings(t *testing.T) {
	d := Default().Media
	if d.MaxBytes != 100<<20 || d.PartBytes != 5<<20 || d.UploadTTL != 24*time.Hour ||
		!reflect.DeepEqual(d.AllowedTypes, []string{"image/*", "video/*", "audio/*", "application/pdf", "application/octet-stream"}) {
		t.Fatalf("media defaults = %+v", d)
	}
	cfg, warnings, err := Load(nil, []string{
		"SYNCGATE_MEDIA_MAX_BYTES=1048576", "SYNCGATE_MEDIA_ALLOWED_TYPES= image/png, application/pdf ,,",
		"SYNCGATE_MEDIA_PART_BYTES=65536", "SYNCGATE_MEDIA_UPLOAD_TTL=2h",
	})
	if err != nil || len(warnings) > 0 {
		t.Fatalf("Load: %v %v", warnings, err)
	}
	want := Media{MaxBytes: 1 << 20, AllowedTypes: []string{"image/png", "application/pdf"}, PartBytes: 64 << 10, UploadTTL: 2 * time.Hour}
	if !reflect.DeepEqual(cfg.Media, want) {
		t.Fatalf("media from the environment = %+v, want %+v", cfg.Media, want)
	}
	// The file's list; the environment replaces it whole.
	path := writeFile(t, "m.yaml", "media:\n  allowed_types: [\"*/*\"]\n  max_bytes: 2048\n")
	cfg, _, err = Load([]string{"--config", path}, nil)
	if err != nil || !reflect.DeepEqual(cfg.Media.AllowedTypes, []string{"*/*"}) || cfg.Media.MaxBytes != 2048 {
		t.Fatalf("media from the file = %+v, %v", cfg.Media, err)
	}
	cfg, _, err = Load([]string{"--config", path}, []string{"SYNCGATE_MEDIA_ALLOWED_TYPES=video/*"})
	if err != nil || !reflect.DeepEqual(cfg.Media.AllowedTypes, []string{"video/*"}) {
		t.Fatalf("env over file = %+v, %v", cfg.Media, err)
	}
	_, _, err = Load(nil, []string{"SYNCGATE_MEDIA_ALLOWED_TYPES="})
	if err == nil || !strings.Contains(err.Error(), "media.allowed_types must list at least one type") {
		t.Fatalf("an empty list: %v", err)
	}
	_, _, err = Load(nil, []string{"SYNCGATE_MEDIA_MAX_BYTES=lots"})
	if err == nil || !strings.Contains(err.Error(), "media.max_bytes wants an integer") {
		t.Fatalf("a bad size: %v", err)
	}
}

func TestFlagsLoadNeedsParse(t *testing.T) {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	f := AddFlags(fs)
	user := fs.String("user", "", "")
	if _, _, err := f.Load(nil); err == nil {
		t.Fatal("Load before Parse succeeded")
	}
	if err := fs.Parse([]string{"--user", "alice", "--data-dir", "/d"}); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := f.Load(nil)
	if err != nil || cfg.DataDir != "/d" || *user != "alice" {
		t.Fatalf("cfg %q user %q err %v", cfg.DataDir, *user, err)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	pem := filepath.Join(dir, "k.pem")
	if err := os.WriteFile(pem, []byte("-----BEGIN PUBLIC KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	secret := strings.Repeat("x", 32)
	tests := []struct {
		name string
		mod  func(*Config)
		want []string // each must appear; nil means valid
	}{
		{"defaults", func(*Config) {}, nil},
		{"listen without port", func(c *Config) { c.Listen = "localhost" }, []string{`config: listen must be host:port, got "localhost"`}},
		{"listen bad port", func(c *Config) { c.Listen = ":99999" }, []string{`listen port must be a number from 0 to 65535, got "99999"`}},
		{"listen any interface, port 0", func(c *Config) { c.Listen = ":0" }, nil},
		{"empty data dir", func(c *Config) { c.DataDir = "" }, []string{"data_dir must not be empty"}},
		{"bad node", func(c *Config) { c.Node = "a b" }, []string{`node must be 1 to 128 bytes of A-Z a-z 0-9 . _ -, got "a b"`}},
		{"empty node", func(c *Config) { c.Node = "" }, []string{"node must be"}},
		{"long node", func(c *Config) { c.Node = strings.Repeat("n", 129) }, []string{"node must be"}},
		{"log level", func(c *Config) { c.LogLevel = "warning" }, []string{`log_level must be debug, info, warn or error, got "warning"`}},
		{"log format", func(c *Config) { c.LogFormat = "logfmt" }, []string{`log_format must be text or json, got "logfmt"`}},

		{"short secret", func(c *Config) { c.Auth.Secret = "hunter2" }, []string{"auth.secret must be at least 32 bytes, got 7 bytes"}},
		{"secret not echoed", func(c *Config) { c.Auth.Secret = "hunter2" }, []string{"!hunter2"}},
		{"leeway negative", func(c *Config) { c.Auth.Leeway = -time.Second }, []string{"auth.leeway must be between 0s and 5m0s, got -1s"}},
		{"leeway too big", func(c *Config) { c.Auth.Leeway = time.Hour }, []string{"auth.leeway must be between 0s and 5m0s, got 1h0m0s"}},
		{"leeway zero ok", func(c *Config) { c.Auth.Leeway = 0 }, nil},
		{"empty issuer and audience ok", func(c *Config) { c.Auth.Issuer, c.Auth.Audience = "", "" }, nil},
		{"valid keys", func(c *Config) {
			c.Auth.Keys = []Key{{ID: "h", Alg: "HS256", Secret: secret}, {ID: "r", Alg: "RS256", PEMFile: pem}, {ID: "e", Alg: "ES256", PEMFile: pem}}
		}, nil},
		{"single key without id ok", func(c *Config) { c.Auth.Keys = []Key{{Alg: "HS256", Secret: secret}} }, nil},
		{"keys and secret", func(c *Config) {
			c.Auth.Secret = secret
			c.Auth.Keys = []Key{{ID: "h", Alg: "HS256", Secret: secret}}
		}, []string{"auth.secret and auth.keys are mutually exclusive"}},
		{"keys and secret file", func(c *Config) {
			c.Auth.SecretFile = "/s"
			c.Auth.Keys = []Key{{ID: "h", Alg: "HS256", Secret: secret}}
		}, []string{`auth.secret_file and auth.keys are mutually exclusive, got auth.secret_file "/s"`}},
		{"bad alg", func(c *Config) { c.Auth.Keys = []Key{{ID: "a", Alg: "none"}} }, []string{`auth.keys[0].alg must be HS256, RS256 or ES256, got "none"`}},
		{"lower-case alg", func(c *Config) { c.Auth.Keys = []Key{{ID: "a", Alg: "hs256", Secret: secret}} }, []string{`auth.keys[0].alg must be HS256, RS256 or ES256, got "hs256"`}},
		{"hs key short secret", func(c *Config) { c.Auth.Keys = []Key{{ID: "a", Alg: "HS256", Secret: "short"}} },
			[]string{"auth.keys[0].secret must be at least 32 bytes for HS256, got 5 bytes", "!short"}},
		{"hs key with pem", func(c *Config) { c.Auth.Keys = []Key{{ID: "a", Alg: "HS256", Secret: secret, PEMFile: pem}} },
			[]string{"auth.keys[0].pem_file is only for RS256 and ES256"}},
		{"rs key without pem", func(c *Config) { c.Auth.Keys = []Key{{ID: "a", Alg: "RS256"}} },
			[]string{"auth.keys[0].pem_file must name the PEM public key for RS256"}},
		{"es key missing pem file", func(c *Config) { c.Auth.Keys = []Key{{ID: "a", Alg: "ES256", PEMFile: filepath.Join(dir, "nope.pem")}} },
			[]string{"auth.keys[0].pem_file: ", "nope.pem", "no such file"}},
		{"pem is a directory", func(c *Config) { c.Auth.Keys = []Key{{ID: "a", Alg: "RS256", PEMFile: dir}} },
			[]string{"auth.keys[0].pem_file", "is not a regular file"}},
		{"rs key with secret", func(c *Config) { c.Auth.Keys = []Key{{ID: "a", Alg: "RS256", PEMFile: pem, Secret: secret}} },
			[]string{"auth.keys[0].secret is only for HS256, alg is RS256"}},
		{"duplicate ids", func(c *Config) {
			c.Auth.Keys = []Key{{ID: "a", Alg: "HS256", Secret: secret}, {ID: "a", Alg: "RS256", PEMFile: pem}}
		}, []string{`auth.keys[1].id "a" is already used by auth.keys[0]`}},
		{"missing id among several", func(c *Config) {
			c.Auth.Keys = []Key{{ID: "a", Alg: "HS256", Secret: secret}, {Alg: "RS256", PEMFile: pem}}
		}, []string{"auth.keys[1].id must be set when there are several keys"}},

		{"mongo scheme", func(c *Config) { c.Mongo.URI = "postgres://user:pw@h/db" }, []string{`mongo.uri must start with mongodb:// or mongodb+srv://, got scheme "postgres"`, "!pw@"}},
		{"mongo srv ok", func(c *Config) { c.Mongo.URI = "mongodb+srv://u:p@cluster.example.com" }, nil},
		{"mongo database", func(c *Config) { c.Mongo.Database = "a.b" }, []string{`mongo.database must be empty`, `got "a.b"`}},
		{"mongo write concern", func(c *Config) { c.Mongo.WriteConcern = "all" }, []string{`mongo.write_concern must be majority or a member count`, `got "all"`}},
		{"mongo write concern zero", func(c *Config) { c.Mongo.WriteConcern = "0" }, []string{`mongo.write_concern`}},
		{"mongo write concern 1", func(c *Config) { c.Mongo.WriteConcern = "1" }, nil},
		{"redis addr", func(c *Config) { c.Redis.Addr = "localhost" }, []string{`redis.addr must be host:port, got "localhost"`}},
		{"redis addr no host", func(c *Config) { c.Redis.Addr = ":6379" }, []string{`redis.addr must name a host, got ":6379"`}},
		{"redis port 0", func(c *Config) { c.Redis.Addr = "r:0" }, []string{`redis.addr port must be a number from 1 to 65535, got "0"`}},
		{"redis ok", func(c *Config) { c.Redis.Addr = "[::1]:6379" }, nil},
		{"redis db", func(c *Config) { c.Redis.DB = -1 }, []string{"redis.db must be at least 0, got -1"}},
		{"redis prefix", func(c *Config) { c.Redis.Prefix = "" }, []string{`redis.prefix must be 1 to 64 bytes`}},

		{"max message small", func(c *Config) { c.Limits.MaxMessageBytes = 12 },
			[]string{"config: limits.max_message_bytes must be between 1KiB and 64MiB, got 12"}},
		{"max message big", func(c *Config) { c.Limits.MaxMessageBytes = 65<<20 + 0; c.Limits.OutboundQueueBytes = 1 << 30 },
			[]string{"limits.max_message_bytes must be between 1KiB and 64MiB, got 68157440"}},
		{"outbound range", func(c *Config) { c.Limits.OutboundQueueBytes = 2 << 30 },
			[]string{"limits.outbound_queue_bytes must be between 1KiB and 1GiB, got 2147483648"}},
		{"outbound below message", func(c *Config) { c.Limits.OutboundQueueBytes = 512 << 10 },
			[]string{"limits.outbound_queue_bytes must be at least limits.max_message_bytes (1048576), got 524288"}},
		{"max batch", func(c *Config) { c.Limits.MaxBatch = 0 }, []string{"limits.max_batch must be between 1 and 100000, got 0"}},
		{"pull limit", func(c *Config) { c.Limits.PullLimit = 0 }, []string{"limits.pull_limit must be between 1 and 100000, got 0"}},
		{"pull limit above max", func(c *Config) { c.Limits.PullLimit = 6000 },
			[]string{"limits.pull_limit must be at most limits.max_pull_limit (5000), got 6000"}},
		{"max pull limit", func(c *Config) { c.Limits.MaxPullLimit = 200000; c.Limits.PullLimit = 10 },
			[]string{"limits.max_pull_limit must be between 1 and 100000, got 200000"}},
		{"max doc bytes", func(c *Config) { c.Limits.MaxDocBytes = 100 }, []string{"limits.max_doc_bytes must be between 1KiB and 15MiB, got 100"}},
		{"max doc above message", func(c *Config) { c.Limits.MaxDocBytes = 2 << 20 },
			[]string{"limits.max_doc_bytes must be at most limits.max_message_bytes (1048576), got 2097152"}},
		{"max depth", func(c *Config) { c.Limits.MaxDepth = 97 }, []string{"limits.max_depth must be between 1 and 96, got 97"}},
		{"max id bytes", func(c *Config) { c.Limits.MaxIDBytes = 0 }, []string{"limits.max_id_bytes must be between 1 and 512, got 0"}},

		{"hello timeout", func(c *Config) { c.Timing.HelloTimeout = 0 }, []string{"timing.hello_timeout must be greater than 0, got 0s"}},
		{"ping interval", func(c *Config) { c.Timing.PingInterval = -time.Second }, []string{"timing.ping_interval must be greater than 0, got -1s"}},
		{"pong timeout", func(c *Config) { c.Timing.PongTimeout = 0 }, []string{"timing.pong_timeout must be greater than 0, got 0s",
			"timing.ping_interval must be less than timing.pong_timeout (0s), got 25s"}},
		{"write timeout", func(c *Config) { c.Timing.WriteTimeout = 0 }, []string{"timing.write_timeout must be greater than 0"}},
		{"shutdown timeout", func(c *Config) { c.Timing.ShutdownTimeout = 0 }, []string{"timing.shutdown_timeout must be greater than 0"}},
		{"max clock skew", func(c *Config) { c.Timing.MaxClockSkew = 0 }, []string{"timing.max_clock_skew must be greater than 0"}},
		{"ping not below pong", func(c *Config) { c.Timing.PingInterval = 60 * time.Second },
			[]string{"timing.ping_interval must be less than timing.pong_timeout (1m0s), got 1m0s"}},

		{"retention", func(c *Config) { c.History.Retention = 0 }, []string{"history.retention must be greater than 0, got 0s"}},
		{"compact every", func(c *Config) { c.History.CompactEvery = 0 }, []string{"history.compact_every must be greater than 0"}},
		{"receipt ttl", func(c *Config) { c.History.ReceiptTTL = 23 * time.Hour }, []string{"history.receipt_ttl must be at least 24h0m0s, got 23h0m0s"}},

		{"media max bytes", func(c *Config) { c.Media.MaxBytes = 10 }, []string{"media.max_bytes must be between 1KiB and 1TiB, got 10"}},
		{"media max bytes huge", func(c *Config) { c.Media.MaxBytes = 2 << 40 }, []string{"media.max_bytes must be between"}},
		{"media part bytes", func(c *Config) { c.Media.PartBytes = 16 << 20 }, []string{"media.part_bytes must be between 64KiB and 15MiB, got 16777216"}},
		{"media upload ttl", func(c *Config) { c.Media.UploadTTL = time.Second }, []string{"media.upload_ttl must be between 1m and 720h, got 1s"}},
		{"media no types", func(c *Config) { c.Media.AllowedTypes = nil }, []string{"media.allowed_types must list at least one type"}},
		{"media bad type", func(c *Config) { c.Media.AllowedTypes = []string{"image/*", "image", "*/png"} },
			[]string{`media.allowed_types[1] must be type/subtype, type/* or */*, got "image"`, `media.allowed_types[2]`}},
		{"media any type", func(c *Config) { c.Media.AllowedTypes = []string{"*/*"} }, nil},

		{"session ttl short", func(c *Config) { c.Sessions.TTL = 30 * time.Second }, []string{"sessions.ttl must be between 1m and 8760h0m0s, got 30s"}},
		{"presence ttl below heartbeat", func(c *Config) { c.Presence.TTL = 20 * time.Second }, []string{"presence.ttl must exceed presence.heartbeat (25s), got 20s"}},
		{"presence awareness cap", func(c *Config) { c.Presence.AwarenessMaxBytes = 1 << 20 }, []string{"presence.awareness_max_bytes"}},
		{"session ttl long", func(c *Config) { c.Sessions.TTL = 9000 * time.Hour; c.Sessions.RememberTTL = 9000 * time.Hour }, []string{"sessions.ttl must be between", "sessions.remember_ttl must be between"}},
		{"remember below ttl", func(c *Config) { c.Sessions.RememberTTL = time.Hour }, []string{"sessions.remember_ttl must be between sessions.ttl (2h0m0s) and 8760h0m0s, got 1h0m0s"}},
		{"remember equal ttl", func(c *Config) { c.Sessions.RememberTTL = c.Sessions.TTL }, nil},
		{"max per user 0", func(c *Config) { c.Sessions.MaxPerUser = 0 }, []string{"sessions.max_per_user must be between 1 and 1000, got 0"}},
		{"max per user 1", func(c *Config) { c.Sessions.MaxPerUser = 1 }, nil},
		{"sweep every", func(c *Config) { c.Sessions.SweepEvery = 0 }, []string{"sessions.sweep_every must be between 1s and 24h, got 0s"}},

		{"all problems at once", func(c *Config) {
			c.Listen = ""
			c.LogLevel = "loud"
			c.Limits.MaxBatch = -1
			c.History.ReceiptTTL = time.Hour
		}, []string{"listen must be host:port", "log_level must be", "limits.max_batch must be", "history.receipt_ttl must be"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mod(&c)
			err := c.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate() = nil")
			}
			for _, w := range tc.want {
				if neg, ok := strings.CutPrefix(w, "!"); ok {
					if strings.Contains(err.Error(), neg) {
						t.Errorf("error %q leaks %q", err, neg)
					}
					continue
				}
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "config: ") {
					t.Errorf("problem %q lacks the config: prefix", line)
				}
			}
		})
	}
}

func TestLogger(t *testing.T) {
	var buf bytes.Buffer
	c := Default()
	c.LogFormat, c.LogLevel = "json", "warn"
	log := c.Logger(&buf)
	log.Info("hidden")
	log.Warn("shown", "k", 1)
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("json log %q: %v", buf.String(), err)
	}
	if rec["msg"] != "shown" || rec["level"] != "WARN" || rec["k"] != float64(1) {
		t.Errorf("record %v", rec)
	}

	buf.Reset()
	c.LogFormat, c.LogLevel = "text", "debug"
	c.Logger(&buf).Debug("dbg")
	if !strings.Contains(buf.String(), "level=DEBUG msg=dbg") {
		t.Errorf("text log %q", buf.String())
	}
}
