module github.com/scratchbuild/services/exporter

go 1.25
