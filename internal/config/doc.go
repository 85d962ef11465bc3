// Package config is the one configuration of the syncgate binary.
//
// Contract:
//
//   - Config holds every setting, in sections (auth, mongo, redis, limits,
//     timing, history). Default is the only place defaults are set; each
//     field's comment states its default.
//   - Load (or AddFlags + Flags.Load for a command with flags of its own)
//     merges, lowest first: Default, the YAML file (--config or
//     SYNCGATE_CONFIG), SYNCGATE_* environment variables, then the flags that
//     were given on the command line. The result is validated.
//   - Names are derived mechanically from the yaml path, so there is one
//     name to learn: limits.max_batch is SYNCGATE_LIMITS_MAX_BATCH in the
//     environment; data_dir is SYNCGATE_DATA_DIR and --data-dir. Only a few
//     settings have flags: --listen, --data-dir, --node, --log-level,
//     --log-format, --auth-secret, --mongo-uri, --redis-addr (and --config).
//   - Durations are Go durations ("30s", "1h30m") everywhere; sizes are plain
//     integers of bytes. A list of strings (media.allowed_types) is
//     comma-separated in the environment. auth.keys can only be set in
//     the file.
//   - An unknown YAML key is an error naming the key, its line and the
//     closest known key. A SYNCGATE_* variable that names no setting is a
//     warning returned to the caller (never printed here); a value that does
//     not parse is an error naming the variable.
//   - Validate reports every problem at once (errors.Join), each naming the
//     yaml key and the bad value; secret values are never echoed.
//   - The package holds no mutable state and prints nothing.
//
// testdata/syncgate.yaml is a complete, commented config file listing every
// key with its default; a test keeps it in step with Default.
package config
