// Command syncgate is the sync gateway: serve, token, bench, version.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/syncgate/syncgate/gateway/auth"
	"github.com/syncgate/syncgate/internal/app"
	"github.com/syncgate/syncgate/internal/config"
)

// version is set at build time (-ldflags "-X main.version=…").
var version = "dev"

const usage = `syncgate — a real-time sync gateway for offline-first apps

Usage:
  syncgate serve   [--config file.yaml] [--listen addr] [--data-dir dir] [flags]
  syncgate token   --user ID [--device ID] [--spaces a,b] [--roles r] [--ttl 24h] [--remember]
  syncgate bench   [--devices N] [--rate R] [--duration D] [--url ws://…]
  syncgate version

Run "syncgate <command> -h" for the flags of a command.
`

func main() {
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

func run(args, env []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(args[1:], env, stderr)
	case "token":
		err = token(args[1:], env, stdout)
	case "bench":
		err = bench(args[1:], env, stdout)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "syncgate", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "syncgate: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	default:
		fmt.Fprintln(stderr, "syncgate:", err)
		return 1
	}
}

// loadConfig parses the config flags on fs (plus any the command added)
// and builds the config: defaults < YAML < SYNCGATE_* env < flags.
func loadConfig(fs *flag.FlagSet, args, env []string, stderr io.Writer) (config.Config, error) {
	f := config.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return config.Config{}, err
	}
	if fs.NArg() > 0 {
		return config.Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cfg, warnings, err := f.Load(env)
	for _, w := range warnings {
		fmt.Fprintln(stderr, "syncgate: warning:", w)
	}
	return cfg, err
}

func serve(args, env []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg, err := loadConfig(fs, args, env, stderr)
	if err != nil {
		return err
	}
	log := cfg.Logger(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	a, err := app.New(ctx, cfg, app.Options{Logger: log})
	if err != nil {
		return err
	}
	log.Info("syncgate: listening", "addr", a.Addr().String(), "data_dir", cfg.DataDir, "version", version)
	return a.Run(ctx)
}

func token(args, env []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	user := fs.String("user", "", "user id (the sub claim); required")
	device := fs.String("device", "", "bind the token to this device id (optional)")
	spaces := fs.String("spaces", "", "comma-separated space ids the user may use")
	roles := fs.String("roles", "", "comma-separated roles (e.g. support, admin)")
	ttl := fs.Duration("ttl", auth.DefaultTTL, "time to expiry")
	remember := fs.Bool("remember", false, "set the remember claim (long sessions)")
	cfg, err := loadConfig(fs, args, env, io.Discard)
	if err != nil {
		return err
	}
	if *user == "" {
		return errors.New("token: --user is required")
	}
	vc, err := auth.FromConfig(cfg)
	if err != nil {
		return err
	}
	key, err := vc.SigningKey()
	if err != nil {
		return fmt.Errorf("token: %w (dev tokens need an HS256 key: auth.secret or the data dir secret)", err)
	}
	tok, err := auth.Mint(key.Secret, auth.MintOptions{
		User: *user, Device: *device, Spaces: splitList(*spaces), Roles: splitList(*roles),
		Remember: *remember, TTL: *ttl, Issuer: cfg.Auth.Issuer, Audience: cfg.Auth.Audience, KeyID: key.ID,
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
