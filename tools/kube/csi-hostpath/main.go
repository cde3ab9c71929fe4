// Command csi-hostpath is a small CSI driver for snapstage's local Kubernetes control plane.
//
// Volumes are plain directories under --root, snapshots are full copies of them, and a group
// snapshot is a set of snapshots taken under one lock with one creation time. It serves the
// Identity, Controller, GroupController and a minimal Node service on a unix socket, for the real
// csi-provisioner and csi-snapshotter sidecars running out of cluster; there is no kubelet, so
// NodePublishVolume only links the target path to the volume directory.
//
//	csi-hostpath --endpoint unix:///tmp/csi/csi.sock --root /tmp/csi/state
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

func main() {
	endpoint := flag.String("endpoint", "unix:///run/csi-hostpath/csi.sock", "CSI endpoint: unix:///path/to/csi.sock")
	root := flag.String("root", "/var/lib/csi-hostpath", "directory holding volumes/, snapshots/ and groups/")
	driverName := flag.String("driver-name", "hostpath.csi.snapstage.local", "CSI driver name (GetPluginInfo)")
	nodeID := flag.String("node-id", "kwok-node-0", "node ID reported by NodeGetInfo")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)

	d, err := newDriver(*root, *driverName, *nodeID)
	if err != nil {
		log.Fatalf("csi-hostpath: %v", err)
	}
	lis, path, err := listen(*endpoint)
	if err != nil {
		log.Fatalf("csi-hostpath: %v", err)
	}
	srv := d.newServer()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		log.Printf("csi-hostpath: %v, stopping", s)
		srv.GracefulStop()
	}()

	log.Printf("csi-hostpath: driver %s node %s root %s serving on %s", *driverName, *nodeID, d.root, *endpoint)
	err = srv.Serve(lis)
	os.Remove(path)
	if err != nil {
		log.Fatalf("csi-hostpath: serve: %v", err)
	}
}

// listen opens the unix socket of endpoint ("unix:///abs/path" or a bare path), replacing a stale
// socket left by an earlier run.
func listen(endpoint string) (net.Listener, string, error) {
	path := endpoint
	if rest, ok := strings.CutPrefix(endpoint, "unix://"); ok {
		path = rest
	} else if strings.Contains(endpoint, "://") {
		return nil, "", fmt.Errorf("endpoint %q: only unix:// endpoints are supported", endpoint)
	}
	if path == "" {
		return nil, "", fmt.Errorf("endpoint %q: empty socket path", endpoint)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, "", err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, "", fmt.Errorf("endpoint %q: %s exists and is not a socket", endpoint, path)
		}
		if err := os.Remove(path); err != nil {
			return nil, "", err
		}
	}
	lis, err := net.Listen("unix", path)
	return lis, path, err
}

// newServer is a gRPC server with the four CSI services and one log line per call.
func (d *driver) newServer() *grpc.Server {
	srv := grpc.NewServer(grpc.UnaryInterceptor(logCall))
	csi.RegisterIdentityServer(srv, &identityServer{driver: d})
	csi.RegisterControllerServer(srv, &controllerServer{driver: d})
	csi.RegisterGroupControllerServer(srv, &groupControllerServer{driver: d})
	csi.RegisterNodeServer(srv, &nodeServer{driver: d})
	return srv
}

// logCall logs method, the request's name/ids, the result code and the duration, and turns a
// panic into codes.Internal instead of killing the driver.
func logCall(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			resp, err = nil, status.Errorf(codes.Internal, "panic: %v", p)
		}
		code := status.Code(err)
		msg := ""
		if err != nil {
			msg = " msg=" + fmt.Sprintf("%q", status.Convert(err).Message())
		}
		log.Printf("%s%s code=%s in %s%s", info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:],
			describe(req), code, time.Since(start).Round(time.Microsecond), msg)
	}()
	return handler(ctx, req)
}

// describe renders the identifying fields of a CSI request, if it has any.
func describe(req any) string {
	var b strings.Builder
	add := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, " %s=%q", k, v)
		}
	}
	if r, ok := req.(interface{ GetName() string }); ok {
		add("name", r.GetName())
	}
	if r, ok := req.(interface{ GetVolumeId() string }); ok {
		add("volume_id", r.GetVolumeId())
	}
	if r, ok := req.(interface{ GetSnapshotId() string }); ok {
		add("snapshot_id", r.GetSnapshotId())
	}
	if r, ok := req.(interface{ GetSourceVolumeId() string }); ok {
		add("source_volume_id", r.GetSourceVolumeId())
	}
	if r, ok := req.(interface{ GetGroupSnapshotId() string }); ok {
		add("group_snapshot_id", r.GetGroupSnapshotId())
	}
	if r, ok := req.(interface{ GetSourceVolumeIds() []string }); ok && len(r.GetSourceVolumeIds()) > 0 {
		add("source_volume_ids", strings.Join(r.GetSourceVolumeIds(), ","))
	}
	if r, ok := req.(interface{ GetTargetPath() string }); ok {
		add("target_path", r.GetTargetPath())
	}
	return b.String()
}
