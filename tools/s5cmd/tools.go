//go:build tools

// Package s5cmd pins the second peer of make bench's throughput figures: s5cmd (MIT), a parallel
// S3 copier in Go. bench/run.sh builds it once (scripts/s5cmd.sh) into .tools/s5cmd-<version>/.
// Only the benchmark uses it; no test or function depends on it.
package s5cmd

import (
	_ "github.com/peak/s5cmd/v2"
)
