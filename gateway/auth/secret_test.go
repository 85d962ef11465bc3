package auth

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestLoadOrCreateSecret(t *testing.T) {
	t.Run("creates file and directory with tight permissions", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "data", "nested")
		path := filepath.Join(dir, "jwt.secret")
		s1, err := LoadOrCreateSecret(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(s1) != 64 {
			t.Errorf("secret is %d bytes, want 64 hex digits", len(s1))
		}
		if _, err := hex.DecodeString(string(s1)); err != nil {
			t.Errorf("secret is not hex: %v", err)
		}
		content, _ := os.ReadFile(path)
		if string(content) != string(s1)+"\n" {
			t.Errorf("file holds %q, secret %q", content, s1)
		}
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("file mode %v (%v), want 0600", fi.Mode().Perm(), err)
		}
		di, err := os.Stat(dir)
		if err != nil || di.Mode().Perm() != 0o700 {
			t.Errorf("dir mode %v (%v), want 0700", di.Mode().Perm(), err)
		}
		s2, err := LoadOrCreateSecret(path)
		if err != nil || string(s2) != string(s1) {
			t.Errorf("second call = %q, %v; want the same secret", s2, err)
		}
		assertOnlyFile(t, dir, "jwt.secret")
	})

	t.Run("racing creators end with one secret", func(t *testing.T) {
		for round := range 20 {
			dir := filepath.Join(t.TempDir(), "d")
			path := filepath.Join(dir, "jwt.secret")
			const n = 16
			got := make([]string, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range n {
				wg.Go(func() {
					<-start
					s, err := LoadOrCreateSecret(path)
					got[i], errs[i] = string(s), err
				})
			}
			close(start)
			wg.Wait()
			for i := range n {
				if errs[i] != nil || got[i] != got[0] || len(got[i]) != 64 {
					t.Fatalf("round %d: creator %d got %q, %v; creator 0 got %q", round, i, got[i], errs[i], got[0])
				}
			}
			assertOnlyFile(t, dir, "jwt.secret")
		}
	})

	t.Run("existing file: trimmed content is the secret", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "s")
		want := strings.Repeat("k", 40)
		if err := os.WriteFile(path, []byte("  "+want+"\r\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := LoadOrCreateSecret(path)
		if err != nil || string(s) != want {
			t.Fatalf("got %q, %v", s, err)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
			t.Errorf("an existing file's mode was changed to %v", fi.Mode().Perm())
		}
	})

	t.Run("errors", func(t *testing.T) {
		dir := t.TempDir()
		short := filepath.Join(dir, "short")
		if err := os.WriteFile(short, []byte("tooshort\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		blocker := filepath.Join(dir, "file")
		if err := os.WriteFile(blocker, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		tests := []struct{ name, path, detail string }{
			{"too short", short, "holds 8 bytes, want at least 32"},
			{"a directory", dir, "auth: read secret file"},
			{"parent is a file", filepath.Join(blocker, "jwt.secret"), "auth: read secret file"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				s, err := LoadOrCreateSecret(tc.path)
				if err == nil || !strings.Contains(err.Error(), tc.detail) {
					t.Fatalf("got %q, %v; want error %q", s, err, tc.detail)
				}
				if strings.Contains(err.Error(), "tooshort") {
					t.Errorf("error %q shows the file's content", err)
				}
			})
		}
	})
}

func assertOnlyFile(t *testing.T, dir, name string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != name {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("dir holds %v, want only %s (temporary files left behind?)", names, name)
	}
}
