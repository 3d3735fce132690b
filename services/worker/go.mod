module github.com/scratchbuild/services/worker

go 1.25
