package main

import (
	"strings"
	"testing"
	"time"
)

func TestFormatOffset(t *testing.T) {
	cases := map[int]string{
		0:                   "+00:00",
		5*3600 + 30*60:      "+05:30",
		-(3*3600 + 30*60):   "-03:30",
		12*3600 + 45*60:     "+12:45",
		-(9*3600 + 30*60):   "-09:30",
		5*3600 + 53*60 + 28: "+05:53",
	}
	for seconds, want := range cases {
		if got := formatOffset(seconds); got != want {
			t.Errorf("formatOffset(%d) = %q, want %q", seconds, got, want)
		}
	}
}

func TestLoadZoneSources(t *testing.T) {
	t.Setenv("TZ", ":Asia/Kolkata")
	zone, err := loadZone("")
	if err != nil {
		t.Fatalf("loadZone with TZ=:Asia/Kolkata: %v", err)
	}
	if zone.String() != "Asia/Kolkata" {
		t.Errorf("zone from TZ = %q, want Asia/Kolkata", zone)
	}

	zone, err = loadZone("Europe/Paris")
	if err != nil {
		t.Fatalf("loadZone(Europe/Paris): %v", err)
	}
	if zone.String() != "Europe/Paris" {
		t.Errorf("flag zone = %q, want Europe/Paris (the flag overrides TZ)", zone)
	}

	t.Setenv("TZ", "")
	zone, err = loadZone("")
	if err != nil {
		t.Fatalf("loadZone with empty TZ: %v", err)
	}
	if zone != time.UTC {
		t.Errorf("default zone = %q, want UTC", zone)
	}
}

func TestLoadZoneErrors(t *testing.T) {
	for _, name := range []string{"Local", "Nowhere/Nothing", "../etc/passwd"} {
		if _, err := loadZone(name); err == nil {
			t.Errorf("loadZone(%q) succeeded, want an error", name)
		}
	}
}

func TestRenderMetrics(t *testing.T) {
	zone, err := time.LoadLocation("Asia/Kolkata")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2024, 3, 1, 6, 30, 0, 0, time.UTC)
	page := string(renderMetrics(now, zone))

	for _, line := range []string{
		"exporter_up 1\n",
		`exporter_timezone_offset_seconds{zone="Asia/Kolkata",abbreviation="IST"} 19800` + "\n",
		`exporter_local_time_info{zone="Asia/Kolkata",abbreviation="IST",time="2024-03-01T12:00:00+05:30"} 1` + "\n",
		"exporter_time_seconds 1709274600.000\n",
		"# TYPE exporter_build_info gauge\n",
	} {
		if !strings.Contains(page, line) {
			t.Errorf("metrics page is missing %q:\n%s", line, page)
		}
	}
}

func TestEscapeLabelValue(t *testing.T) {
	got := escapeLabelValue("a\\b\"c\nd")
	want := `a\\b\"c\nd`
	if got != want {
		t.Errorf("escapeLabelValue = %q, want %q", got, want)
	}
}
