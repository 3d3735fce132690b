// Command exporter serves Prometheus metrics and probes HTTPS endpoints.
//
// It relies on two things that a scratch image must supply: the IANA time-zone
// database under /usr/share/zoneinfo (the binary does not embed time/tzdata) and
// the CA bundle that crypto/x509 reads on Linux
// (/etc/ssl/certs/ca-certificates.crt, or SSL_CERT_FILE / SSL_CERT_DIR when set).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

const usage = `Usage:
  exporter serve [-listen ADDR] [-tz NAME]
  exporter probe -url URL [-tz NAME] [-timeout DURATION]

Commands:
  serve   Serve /metrics (Prometheus text format) and /healthz over HTTP.
  probe   Print the zone's current UTC offset, then GET an HTTPS URL and print its status.

Run "exporter COMMAND -h" for the flags of a command.

The zone is the -tz flag, else the TZ environment variable, else UTC. It is
loaded from the system zoneinfo directory, and a zone that fails to load is an
error. HTTPS certificates are verified against the system CA bundle.
`

// exitUsage is the exit status for invalid command lines, as with the flag package.
const exitUsage = 2

func main() {
	log.SetFlags(0)
	log.SetPrefix("exporter: ")

	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(exitUsage)
	}

	var err error
	switch command, args := os.Args[1], os.Args[2:]; command {
	case "serve":
		err = runServe(args)
	case "probe":
		err = runProbe(args)
	case "-h", "-help", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "exporter: unknown command %q\n\n%s", command, usage)
		os.Exit(exitUsage)
	}

	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		// The flag package has already printed the command's usage.
	case errors.As(err, new(usageError)):
		os.Exit(exitUsage)
	default:
		log.Print(err)
		os.Exit(1)
	}
}

// usageError is an invalid command line whose message has already been printed.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }

// parseFlags parses args into fs and wraps parse errors, which fs has already
// printed along with its usage, in usageError.
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err == nil && fs.NArg() > 0 {
		err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
		fmt.Fprintf(fs.Output(), "%v\n", err)
		fs.Usage()
	}
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		return usageError{err}
	}
	return err
}

// newFlagSet returns a flag set whose usage message starts with synopsis and
// description.
func newFlagSet(name, synopsis, description string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s\n\n%s\n\nFlags:\n", synopsis, description)
		fs.PrintDefaults()
	}
	return fs
}

// addZoneFlag registers -tz on fs.
func addZoneFlag(fs *flag.FlagSet) *string {
	return fs.String("tz", "", "IANA time-zone `NAME`, such as Asia/Kolkata (default: $TZ, else UTC)")
}

// loadZone loads the zone named by flagValue, else by $TZ, else UTC.
//
// time.LoadLocation searches $ZONEINFO and then the system directories,
// /usr/share/zoneinfo first. No embedded copy exists to fall back on, because
// this program does not import time/tzdata.
func loadZone(flagValue string) (*time.Location, error) {
	name := flagValue
	if name == "" {
		// POSIX allows a leading colon in TZ to mark a zone file name.
		name = strings.TrimPrefix(os.Getenv("TZ"), ":")
	}
	if name == "" {
		name = "UTC"
	}
	// LoadLocation maps "Local" to the process's local zone instead of a file,
	// which would hide a missing zoneinfo directory.
	if name == "Local" {
		return nil, errors.New(`invalid time zone "Local": use an IANA zone name such as Europe/Paris`)
	}

	zone, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("load time zone %q: %w (check the name, and that the zoneinfo database is installed under /usr/share/zoneinfo)", name, err)
	}
	return zone, nil
}

// formatOffset formats a UTC offset in seconds as +HH:MM or -HH:MM.
// Seconds beyond whole minutes, as in historical local mean times, are
// truncated.
func formatOffset(seconds int) string {
	sign := '+'
	if seconds < 0 {
		sign = '-'
		seconds = -seconds
	}
	return fmt.Sprintf("%c%02d:%02d", sign, seconds/3600, seconds%3600/60)
}

func runProbe(args []string) error {
	fs := newFlagSet("exporter probe", "exporter probe -url URL [-tz NAME] [-timeout DURATION]",
		"Print \"zone NAME offset +HH:MM\" for the zone's current UTC offset, then GET the\n"+
			"HTTPS URL, verifying its certificate against the system CA bundle, and print\n"+
			"\"fetch URL status CODE\". Exits 1 if the zone fails to load, the request fails\n"+
			"or the status is not 2xx.")
	target := fs.String("url", "", "HTTPS `URL` to GET (required)")
	zoneName := addZoneFlag(fs)
	timeout := fs.Duration("timeout", 10*time.Second, "maximum `DURATION` of the whole request, including the TLS handshake")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *target == "" {
		err := errors.New("missing required flag -url")
		fmt.Fprintf(fs.Output(), "%v\n", err)
		fs.Usage()
		return usageError{err}
	}
	if err := validateHTTPSURL(*target); err != nil {
		return err
	}

	zone, err := loadZone(*zoneName)
	if err != nil {
		return err
	}
	_, offset := time.Now().In(zone).Zone()
	fmt.Printf("zone %s offset %s\n", zone, formatOffset(offset))

	status, err := fetch(*target, *timeout)
	if err != nil {
		return err
	}
	fmt.Printf("fetch %s status %d\n", *target, status)
	return nil
}

// validateHTTPSURL returns an error unless rawURL is an absolute https URL.
func validateHTTPSURL(rawURL string) error {
	parsed, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("invalid URL %q: %w", rawURL, err)
	}
	if parsed.Scheme != "https" || parsed.Host == "" {
		return fmt.Errorf("invalid URL %q: expected https://HOST[:PORT]/PATH", rawURL)
	}
	return nil
}

// fetch sends a GET request to rawURL and returns the status code, which
// must be 2xx. The client has no custom RootCAs, so crypto/x509 verifies the
// server against the system roots.
func fetch(rawURL string, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return 0, fmt.Errorf("invalid URL %q: %w", rawURL, err)
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		// The error already names the method and URL.
		return 0, err
	}
	defer response.Body.Close()

	// Read up to 1 MiB of the body so that a connection that fails in the
	// middle of the body is reported. The content itself is not used.
	if _, err := io.Copy(io.Discard, io.LimitReader(response.Body, 1<<20)); err != nil {
		return 0, fmt.Errorf("GET %s: read response body: %w", rawURL, err)
	}
	if response.StatusCode < 200 || response.StatusCode > 299 {
		return 0, fmt.Errorf("GET %s: unexpected status %s", rawURL, response.Status)
	}
	return response.StatusCode, nil
}
