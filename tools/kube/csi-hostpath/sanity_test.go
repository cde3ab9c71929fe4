package main

import (
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
)

// TestCSISanity runs the csi-test conformance suite (the specs of the csi-sanity command) against
// the driver on a unix socket. Specs of RPCs the driver does not advertise skip themselves.
func TestCSISanity(t *testing.T) {
	dir := t.TempDir()
	d, err := newDriver(filepath.Join(dir, "state"), "hostpath.csi.snapstage.local", "kwok-node-0")
	if err != nil {
		t.Fatal(err)
	}
	lis, sock, err := listen("unix://" + filepath.Join(dir, "csi.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := d.newServer()
	go srv.Serve(lis)
	defer srv.Stop()

	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + sock
	cfg.TargetPath = filepath.Join(dir, "mount")
	cfg.StagingPath = filepath.Join(dir, "staging")
	cfg.TestVolumeSize = 10 << 20
	sanity.Test(t, cfg)
}
