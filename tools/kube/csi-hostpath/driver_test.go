package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

type clients struct {
	ctl   csi.ControllerClient
	group csi.GroupControllerClient
}

// serve runs the driver on state root over a unix socket, as the sidecars see it.
func serve(t *testing.T, root string) clients {
	t.Helper()
	d, err := newDriver(root, "hostpath.csi.snapstage.local", "kwok-node-0")
	if err != nil {
		t.Fatal(err)
	}
	lis, _, err := listen("unix://" + filepath.Join(t.TempDir(), "csi.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := d.newServer()
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return clients{csi.NewControllerClient(conn), csi.NewGroupControllerClient(conn)}
}

var mountRW = []*csi.VolumeCapability{{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}}

func createVolume(t *testing.T, c clients, name string, size int64, src *csi.VolumeContentSource) *csi.Volume {
	t.Helper()
	resp, err := c.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: mountRW,
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeContentSource: src})
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return resp.GetVolume()
}

func createSnapshot(t *testing.T, c clients, name, volID string) *csi.Snapshot {
	t.Helper()
	resp, err := c.ctl.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: volID})
	if err != nil {
		t.Fatalf("CreateSnapshot %s: %v", name, err)
	}
	return resp.GetSnapshot()
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wantCode(t *testing.T, err error, want codes.Code, what string) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("%s: got %v (%v), want %v", what, got, err, want)
	}
}

func TestSnapshotThenRestoreHoldsTheOriginalBytes(t *testing.T) {
	c := serve(t, t.TempDir())
	src := createVolume(t, c, "prod-db", 10<<20, nil)
	dir := src.GetVolumeContext()["path"]
	writeFile(t, filepath.Join(dir, "PG_VERSION"), "17\n", 0o600)
	writeFile(t, filepath.Join(dir, "base", "1", "1259"), "original table bytes", 0o640)
	if err := os.Symlink("base/1", filepath.Join(dir, "current")); err != nil {
		t.Fatal(err)
	}

	snap := createSnapshot(t, c, "prod-db-snap", src.GetVolumeId())
	if !snap.GetReadyToUse() || snap.GetCreationTime() == nil || snap.GetSizeBytes() != 10<<20 ||
		snap.GetSourceVolumeId() != src.GetVolumeId() {
		t.Fatalf("snapshot %v", snap)
	}
	writeFile(t, filepath.Join(dir, "base", "1", "1259"), "overwritten after the snapshot", 0o640)
	writeFile(t, filepath.Join(dir, "new-file"), "written after the snapshot", 0o644)

	restored := createVolume(t, c, "staging-db", 10<<20, fromSnapshot(snap.GetSnapshotId()))
	if restored.GetContentSource().GetSnapshot().GetSnapshotId() != snap.GetSnapshotId() {
		t.Fatalf("restored volume's content source %v", restored.GetContentSource())
	}
	rdir := restored.GetVolumeContext()["path"]
	if got := readFile(t, filepath.Join(rdir, "base", "1", "1259")); got != "original table bytes" {
		t.Fatalf("restored file holds %q", got)
	}
	if got := readFile(t, filepath.Join(rdir, "current", "1259")); got != "original table bytes" {
		t.Fatalf("restored symlink leads to %q", got)
	}
	if _, err := os.Stat(filepath.Join(rdir, "new-file")); !os.IsNotExist(err) {
		t.Fatalf("a file written after the snapshot is in the restore: %v", err)
	}
	for name, want := range map[string]os.FileMode{"PG_VERSION": 0o600, "base/1/1259": 0o640} {
		if fi, err := os.Stat(filepath.Join(rdir, name)); err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: mode %v, %v; want %v", name, fi.Mode(), err, want)
		}
	}
	if link, err := os.Readlink(filepath.Join(rdir, "current")); err != nil || link != "base/1" {
		t.Fatalf("symlink %q, %v", link, err)
	}

	// A restore is at least as large as the snapshot's source; a clone copies the live volume.
	_, err := c.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "too-small", VolumeCapabilities: mountRW,
		CapacityRange: &csi.CapacityRange{LimitBytes: 1 << 20}, VolumeContentSource: fromSnapshot(snap.GetSnapshotId())})
	wantCode(t, err, codes.OutOfRange, "restore into a volume limited below the snapshot's size")
	if v := createVolume(t, c, "grown", 1<<20, fromSnapshot(snap.GetSnapshotId())); v.GetCapacityBytes() != 10<<20 {
		t.Fatalf("restore asking for 1 MiB of a 10 MiB snapshot: capacity %d", v.GetCapacityBytes())
	}
	clone := createVolume(t, c, "clone", 0, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.GetVolumeId()}}})
	if got := readFile(t, filepath.Join(clone.GetVolumeContext()["path"], "base", "1", "1259")); got != "overwritten after the snapshot" {
		t.Fatalf("clone holds %q", got)
	}
	if clone.GetCapacityBytes() != 10<<20 {
		t.Fatalf("clone capacity %d, want the source's", clone.GetCapacityBytes())
	}

	// The snapshot outlives its source volume, and the state survives a driver restart.
	if _, err := c.ctl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: src.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("deleted volume's directory: %v", err)
	}
	again := createVolume(t, c, "staging-db-2", 10<<20, fromSnapshot(snap.GetSnapshotId()))
	if got := readFile(t, filepath.Join(again.GetVolumeContext()["path"], "base", "1", "1259")); got != "original table bytes" {
		t.Fatalf("restore after the source's deletion holds %q", got)
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	root := t.TempDir()
	c := serve(t, root)
	vol := createVolume(t, c, "v", 0, nil)
	writeFile(t, filepath.Join(vol.GetVolumeContext()["path"], "f"), "kept", 0o644)
	snap := createSnapshot(t, c, "s", vol.GetVolumeId())
	os.Mkdir(filepath.Join(root, "volumes", ".tmp-vol-interrupted"), 0o755) // as left by a crash mid-copy

	c2 := serve(t, root)
	vols, err := c2.ctl.ListVolumes(context.Background(), &csi.ListVolumesRequest{})
	if err != nil || len(vols.GetEntries()) != 1 || vols.GetEntries()[0].GetVolume().GetVolumeId() != vol.GetVolumeId() {
		t.Fatalf("volumes after restart: %v, %v", vols, err)
	}
	if again := createSnapshot(t, c2, "s", vol.GetVolumeId()); again.GetSnapshotId() != snap.GetSnapshotId() {
		t.Fatalf("snapshot after restart %s, want %s", again.GetSnapshotId(), snap.GetSnapshotId())
	}
	if _, err := os.Stat(filepath.Join(root, "volumes", ".tmp-vol-interrupted")); !os.IsNotExist(err) {
		t.Fatalf("left-over temp directory survived the restart: %v", err)
	}
}

func TestCreateIsIdempotentByName(t *testing.T) {
	c := serve(t, t.TempDir())
	v1 := createVolume(t, c, "data", 5<<20, nil)
	if v2 := createVolume(t, c, "data", 5<<20, nil); v2.GetVolumeId() != v1.GetVolumeId() {
		t.Fatalf("same name, same request: %s then %s", v1.GetVolumeId(), v2.GetVolumeId())
	}
	_, err := c.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "data", VolumeCapabilities: mountRW,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 6 << 20}})
	wantCode(t, err, codes.AlreadyExists, "same name, larger capacity")
	_, err = c.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "data", VolumeCapabilities: mountRW,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 5 << 20}, Parameters: map[string]string{"tier": "fast"}})
	wantCode(t, err, codes.AlreadyExists, "same name, other parameters")

	other := createVolume(t, c, "other", 0, nil)
	s1 := createSnapshot(t, c, "snap", v1.GetVolumeId())
	if s2 := createSnapshot(t, c, "snap", v1.GetVolumeId()); s2.GetSnapshotId() != s1.GetSnapshotId() ||
		!s2.GetCreationTime().AsTime().Equal(s1.GetCreationTime().AsTime()) {
		t.Fatalf("same snapshot name and source: %v then %v", s1, s2)
	}
	_, err = c.ctl.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: other.GetVolumeId()})
	wantCode(t, err, codes.AlreadyExists, "same snapshot name, other source")

	_, err = c.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{VolumeCapabilities: mountRW})
	wantCode(t, err, codes.InvalidArgument, "CreateVolume without a name")
	_, err = c.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "x"})
	wantCode(t, err, codes.InvalidArgument, "CreateVolume without capabilities")
	_, err = c.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: mountRW,
		VolumeContentSource: fromSnapshot("snap-missing")})
	wantCode(t, err, codes.NotFound, "CreateVolume from a missing snapshot")
	_, err = c.ctl.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: "x", SourceVolumeId: "vol-missing"})
	wantCode(t, err, codes.NotFound, "CreateSnapshot of a missing volume")
}

func TestListSnapshotsBySnapshotID(t *testing.T) {
	c := serve(t, t.TempDir())
	var snaps []*csi.Snapshot
	for _, name := range []string{"a", "b", "c"} {
		v := createVolume(t, c, "vol-"+name, 0, nil)
		snaps = append(snaps, createSnapshot(t, c, "snap-"+name, v.GetVolumeId()))
	}
	ctx := context.Background()

	resp, err := c.ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: snaps[1].GetSnapshotId()})
	if err != nil || len(resp.GetEntries()) != 1 || resp.GetEntries()[0].GetSnapshot().GetSnapshotId() != snaps[1].GetSnapshotId() ||
		!resp.GetEntries()[0].GetSnapshot().GetReadyToUse() || resp.GetEntries()[0].GetSnapshot().GetSourceVolumeId() != snaps[1].GetSourceVolumeId() {
		t.Fatalf("ListSnapshots by snapshot_id: %v, %v", resp, err)
	}
	resp, err = c.ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: "snap-none"})
	if err != nil || len(resp.GetEntries()) != 0 {
		t.Fatalf("ListSnapshots by a missing snapshot_id: %v, %v", resp, err)
	}
	resp, err = c.ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: snaps[2].GetSourceVolumeId()})
	if err != nil || len(resp.GetEntries()) != 1 || resp.GetEntries()[0].GetSnapshot().GetSnapshotId() != snaps[2].GetSnapshotId() {
		t.Fatalf("ListSnapshots by source_volume_id: %v, %v", resp, err)
	}

	// Paging: two, then the rest from next_token, in creation order.
	first, err := c.ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: 2})
	if err != nil || len(first.GetEntries()) != 2 || first.GetNextToken() == "" {
		t.Fatalf("first page: %v, %v", first, err)
	}
	rest, err := c.ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{StartingToken: first.GetNextToken()})
	if err != nil || len(rest.GetEntries()) != 1 || rest.GetNextToken() != "" {
		t.Fatalf("second page: %v, %v", rest, err)
	}
	var got []string
	for _, e := range append(first.GetEntries(), rest.GetEntries()...) {
		got = append(got, e.GetSnapshot().GetSnapshotId())
	}
	for i, s := range snaps {
		if got[i] != s.GetSnapshotId() {
			t.Fatalf("paged order %v, want creation order", got)
		}
	}
	_, err = c.ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{StartingToken: "bogus"})
	wantCode(t, err, codes.Aborted, "invalid starting_token")
}

func TestGroupSnapshotOfTwoVolumes(t *testing.T) {
	c := serve(t, t.TempDir())
	ctx := context.Background()
	data := createVolume(t, c, "pgdata", 8<<20, nil)
	wal := createVolume(t, c, "pgwal", 4<<20, nil)
	writeFile(t, filepath.Join(data.GetVolumeContext()["path"], "table"), "data at t0", 0o600)
	writeFile(t, filepath.Join(wal.GetVolumeContext()["path"], "000001"), "wal at t0", 0o600)

	req := &csi.CreateVolumeGroupSnapshotRequest{Name: "groupsnapshot-uid-1",
		SourceVolumeIds: []string{data.GetVolumeId(), wal.GetVolumeId()}}
	resp, err := c.group.CreateVolumeGroupSnapshot(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	g := resp.GetGroupSnapshot()
	if !g.GetReadyToUse() || len(g.GetSnapshots()) != 2 || g.GetGroupSnapshotId() == "" {
		t.Fatalf("group snapshot %v", g)
	}
	var ids []string
	for i, sn := range g.GetSnapshots() {
		if sn.GetSourceVolumeId() != req.SourceVolumeIds[i] || sn.GetGroupSnapshotId() != g.GetGroupSnapshotId() ||
			!sn.GetCreationTime().AsTime().Equal(g.GetCreationTime().AsTime()) || !sn.GetReadyToUse() {
			t.Fatalf("member %d: %v", i, sn)
		}
		ids = append(ids, sn.GetSnapshotId())
	}
	writeFile(t, filepath.Join(data.GetVolumeContext()["path"], "table"), "data at t1", 0o600)
	writeFile(t, filepath.Join(wal.GetVolumeContext()["path"], "000001"), "wal at t1", 0o600)

	// Same name and volumes (in any order): the same group; other volumes: AlreadyExists.
	again, err := c.group.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: req.Name,
		SourceVolumeIds: []string{wal.GetVolumeId(), data.GetVolumeId()}})
	if err != nil || again.GetGroupSnapshot().GetGroupSnapshotId() != g.GetGroupSnapshotId() {
		t.Fatalf("repeated CreateVolumeGroupSnapshot: %v, %v", again, err)
	}
	_, err = c.group.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: req.Name,
		SourceVolumeIds: []string{data.GetVolumeId()}})
	wantCode(t, err, codes.AlreadyExists, "same group name, other volumes")

	got, err := c.group.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{
		GroupSnapshotId: g.GetGroupSnapshotId(), SnapshotIds: ids})
	if err != nil || len(got.GetGroupSnapshot().GetSnapshots()) != 2 || !got.GetGroupSnapshot().GetReadyToUse() {
		t.Fatalf("GetVolumeGroupSnapshot: %v, %v", got, err)
	}
	_, err = c.group.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{
		GroupSnapshotId: g.GetGroupSnapshotId(), SnapshotIds: ids[:1]})
	wantCode(t, err, codes.InvalidArgument, "GetVolumeGroupSnapshot with a partial member list")
	listed, err := c.ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: ids[1]})
	if err != nil || len(listed.GetEntries()) != 1 || listed.GetEntries()[0].GetSnapshot().GetGroupSnapshotId() != g.GetGroupSnapshotId() {
		t.Fatalf("member in ListSnapshots: %v, %v", listed, err)
	}

	// Each member restores its own volume as of the group snapshot.
	rData := createVolume(t, c, "staging-pgdata", 8<<20, fromSnapshot(ids[0]))
	rWal := createVolume(t, c, "staging-pgwal", 4<<20, fromSnapshot(ids[1]))
	if got := readFile(t, filepath.Join(rData.GetVolumeContext()["path"], "table")); got != "data at t0" {
		t.Fatalf("restored pgdata holds %q", got)
	}
	if got := readFile(t, filepath.Join(rWal.GetVolumeContext()["path"], "000001")); got != "wal at t0" {
		t.Fatalf("restored pgwal holds %q", got)
	}

	// Members go only with their group.
	_, err = c.ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: ids[0]})
	wantCode(t, err, codes.InvalidArgument, "DeleteSnapshot of a group member")
	_, err = c.group.DeleteVolumeGroupSnapshot(ctx, &csi.DeleteVolumeGroupSnapshotRequest{
		GroupSnapshotId: g.GetGroupSnapshotId(), SnapshotIds: []string{ids[0], "snap-other"}})
	wantCode(t, err, codes.InvalidArgument, "DeleteVolumeGroupSnapshot with mismatched snapshot_ids")
	for range 2 { // idempotent
		if _, err := c.group.DeleteVolumeGroupSnapshot(ctx, &csi.DeleteVolumeGroupSnapshotRequest{
			GroupSnapshotId: g.GetGroupSnapshotId(), SnapshotIds: ids}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = c.group.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: g.GetGroupSnapshotId(), SnapshotIds: ids})
	wantCode(t, err, codes.NotFound, "GetVolumeGroupSnapshot after delete")
	for _, id := range ids {
		if l, err := c.ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: id}); err != nil || len(l.GetEntries()) != 0 {
			t.Fatalf("member %s after the group's deletion: %v, %v", id, l, err)
		}
	}
	_, err = c.group.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "g2",
		SourceVolumeIds: []string{data.GetVolumeId(), "vol-missing"}})
	wantCode(t, err, codes.NotFound, "group snapshot of a missing volume")
	if l, _ := c.ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{}); len(l.GetEntries()) != 0 {
		t.Fatalf("a failed group snapshot left snapshots: %v", l)
	}
}
