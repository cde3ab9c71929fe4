//go:build tools

// Package s3 pins the on-prem S3 server of snapstage's tests and benchmarks: Versity's S3 gateway
// (versitygw, Apache-2.0) on its POSIX backend, the S3 front end on-prem shops put over their file
// systems. MinIO's server would be the other obvious choice; it is AGPL-licensed, which this project
// does not take in. scripts/onprem-s3.sh builds it into .tools/ and runs it on loopback.
package s3

import (
	_ "github.com/versity/versitygw/cmd/versitygw"
)
