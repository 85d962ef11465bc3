package auth

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// LoadOrCreateSecret returns the HS256 secret stored at path: the file's
// content with surrounding white space trimmed, at least MinSecretBytes
// long. The secret is that text itself (not its hex decoding), so any tool
// reading the file gets the same secret.
//
// If the file does not exist it is created with 32 random bytes written as
// 64 hex digits, mode 0600, in a directory created with mode 0700 if
// needed. The file is published atomically and exclusively (written under a
// temporary name, then hard-linked into place, which fails if path exists),
// so racing creators, in one process or several, all end with the same
// secret, and no reader ever sees a partial file.
func LoadOrCreateSecret(path string) ([]byte, error) {
	for range 3 {
		secret, err := readSecret(path)
		if !errors.Is(err, fs.ErrNotExist) {
			return secret, err
		}
		if err := createSecret(path); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		// Created by us or by a racing creator: read what won.
	}
	return nil, fmt.Errorf("auth: secret file %s keeps disappearing", path)
}

func readSecret(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth: read secret file: %w", err)
	}
	secret := bytes.TrimSpace(data)
	if len(secret) < MinSecretBytes {
		return nil, fmt.Errorf("auth: secret file %s holds %d bytes, want at least %d", path, len(secret), MinSecretBytes)
	}
	return secret, nil
}

// createSecret publishes a new random secret at path. It returns an error
// matching fs.ErrExist if path already exists.
func createSecret(path string) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("auth: create secret directory: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return fmt.Errorf("auth: generate secret: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*") // mode 0600
	if err != nil {
		return fmt.Errorf("auth: create secret file: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(hex.EncodeToString(raw[:]) + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("auth: write secret file: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		return fmt.Errorf("auth: create secret file: %w", err)
	}
	// Make the new name durable; failing to is not fatal.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
