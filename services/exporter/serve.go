package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// shutdownTimeout is the maximum time that in-flight requests get to finish
// after SIGTERM or SIGINT.
const shutdownTimeout = 5 * time.Second

func runServe(args []string) error {
	fs := newFlagSet("exporter serve", "exporter serve [-listen ADDR] [-tz NAME]",
		"Serve GET /metrics in the Prometheus text format and GET /healthz, which returns\n"+
			"\"ok\". Stops on SIGTERM or SIGINT after in-flight requests finish, waiting at\n"+
			"most 5s.")
	listen := fs.String("listen", ":9090", "TCP `ADDR` (host:port) to listen on")
	zoneName := addZoneFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}

	zone, err := loadZone(*zoneName)
	if err != nil {
		return err
	}

	mux := http.NewServeMux()
	// A GET pattern also matches HEAD.
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		w.Write(renderMetrics(time.Now(), zone))
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	server := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.Default(),
	}

	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	log.Printf("listening on %s, time zone %s", listener.Addr(), zone)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	serveErr := make(chan error, 1)
	go func() { serveErr <- server.Serve(listener) }()

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve on %s: %w", listener.Addr(), err)
	case <-ctx.Done():
	}
	log.Print("received termination signal, shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := server.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shut down: %w", err)
	}
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve on %s: %w", listener.Addr(), err)
	}
	log.Print("stopped")
	return nil
}

// renderMetrics returns the metrics page in the Prometheus text exposition
// format 0.0.4 for the moment now, with zone as the configured time zone.
func renderMetrics(now time.Time, zone *time.Location) []byte {
	local := now.In(zone)
	abbreviation, offset := local.Zone()
	zoneLabels := fmt.Sprintf(`zone="%s",abbreviation="%s"`, escapeLabelValue(zone.String()), escapeLabelValue(abbreviation))

	var b bytes.Buffer
	writeMetric(&b, "exporter_up", "Whether the exporter is running (always 1).", "", "1")
	writeMetric(&b, "exporter_build_info", "Build information of the exporter binary.",
		fmt.Sprintf(`goversion="%s"`, escapeLabelValue(runtime.Version())), "1")
	writeMetric(&b, "exporter_time_seconds", "Current time in seconds since the Unix epoch.",
		"", fmt.Sprintf("%.3f", float64(now.UnixMilli())/1000))
	writeMetric(&b, "exporter_timezone_offset_seconds", "Current UTC offset of the configured time zone.",
		zoneLabels, fmt.Sprint(offset))
	// NOTE: the time label changes on every scrape, so each scrape starts a new
	// series. Graph exporter_time_seconds instead, and use this metric to read
	// the local time.
	writeMetric(&b, "exporter_local_time_info", "Current local time in the configured time zone, as an RFC 3339 label.",
		zoneLabels+fmt.Sprintf(`,time="%s"`, local.Format(time.RFC3339)), "1")
	return b.Bytes()
}

// writeMetric writes one gauge with its HELP and TYPE lines. labels is the
// text between the braces, or empty for a metric without labels.
func writeMetric(b *bytes.Buffer, name, help, labels, value string) {
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
	if labels != "" {
		fmt.Fprintf(b, "%s{%s} %s\n", name, labels, value)
	} else {
		fmt.Fprintf(b, "%s %s\n", name, value)
	}
}

// labelValueEscaper escapes the characters that the text format does not
// allow unescaped in a label value.
var labelValueEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func escapeLabelValue(value string) string {
	return labelValueEscaper.Replace(value)
}
