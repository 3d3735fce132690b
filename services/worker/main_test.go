package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteAndVerify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "payload.txt")
	if err := writeAndVerify(path, 7); err != nil {
		t.Fatalf("writeAndVerify: %v", err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := info.Mode().Perm(); mode != 0o600 {
		t.Errorf("payload mode = %v, want 0600", mode)
	}
}

func TestWriteAndVerifyMissingDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "payload.txt")
	if err := writeAndVerify(path, 1); err == nil {
		t.Error("writeAndVerify into a missing directory succeeded, want an error")
	}
}

func TestRunJobRemovesDir(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	if err := runJob(1); err != nil {
		t.Fatalf("runJob: %v", err)
	}
	entries, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("TMPDIR contains %d entries after the job, want 0", len(entries))
	}
}
