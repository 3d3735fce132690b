// Command worker runs a temporary-file job once or at a fixed interval.
//
// Each job exercises two things that a scratch image must supply: a writable
// temporary directory (/tmp, or $TMPDIR when set) and an /etc/passwd entry for
// the process's uid, which os/user reads when the binary is built without cgo.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"syscall"
	"time"
)

const usageText = `Usage: worker [-once] [-interval DURATION]

Run a job that creates a directory with os.MkdirTemp, writes a file into it,
reads the file back, removes the directory and prints
"job N user NAME uid UID home HOME tmp DIR ok". The user fields come from
/etc/passwd. Without -once, the first job runs at start and the next ones every
-interval until SIGTERM or SIGINT, after which the worker exits 0. Any failed
job ends the worker with exit status 1.

Flags:
`

func main() {
	log.SetFlags(0)
	log.SetPrefix("worker: ")

	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	once := fs.Bool("once", false, "run one job and exit")
	interval := fs.Duration("interval", 30*time.Second, "`DURATION` between the starts of two jobs, such as 500ms or 5m (ignored with -once)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageText)
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		os.Exit(2)
	}
	if *interval <= 0 {
		fmt.Fprintf(os.Stderr, "invalid -interval %v: must be greater than 0\n", *interval)
		fs.Usage()
		os.Exit(2)
	}

	var err error
	if *once {
		err = runJob(1)
	} else {
		err = runLoop(*interval)
	}
	if err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

// runLoop runs a job at once and then one every interval until SIGTERM or
// SIGINT arrives. A signal that arrives during a job takes effect after it.
func runLoop(interval time.Duration) error {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, os.Interrupt)
	log.Printf("started, interval %v", interval)

	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for n := 1; ; n++ {
		if err := runJob(n); err != nil {
			return err
		}
		select {
		case sig := <-signals:
			log.Printf("received signal %q, stopped after %d jobs", sig, n)
			return nil
		case <-ticker.C:
		}
	}
}

// runJob runs job n and prints its result line to stdout.
func runJob(n int) error {
	account, err := user.Current()
	if err != nil {
		return fmt.Errorf("job %d: look up current user: %w", n, err)
	}
	// NOTE: without cgo, user.Current falls back to $USER and $HOME when the
	// uid has no /etc/passwd entry, so a missing entry goes unnoticed if both
	// are set.

	dir, err := os.MkdirTemp("", "job-*")
	if err != nil {
		return fmt.Errorf("job %d: create temporary directory: %w", n, err)
	}
	checkErr := writeAndVerify(filepath.Join(dir, "payload.txt"), n)
	removeErr := os.RemoveAll(dir)
	if checkErr != nil {
		return fmt.Errorf("job %d: %w", n, checkErr)
	}
	if removeErr != nil {
		return fmt.Errorf("job %d: remove temporary directory: %w", n, removeErr)
	}

	fmt.Printf("job %d user %s uid %s home %s tmp %s ok\n", n, account.Username, account.Uid, account.HomeDir, dir)
	return nil
}

// writeAndVerify writes a payload for job n to path and checks that reading
// the file returns the same bytes.
func writeAndVerify(path string, n int) error {
	payload := []byte(fmt.Sprintf("job %d written at %s\n", n, time.Now().UTC().Format(time.RFC3339Nano)))
	if err := os.WriteFile(path, payload, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	readBack, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if !bytes.Equal(readBack, payload) {
		return fmt.Errorf("read %s: got %d bytes that differ from the %d bytes written", path, len(readBack), len(payload))
	}
	return nil
}
