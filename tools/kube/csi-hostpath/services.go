package main

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

const (
	vendorVersion   = "0.1.0"
	defaultCapacity = 1 << 30 // a volume's nominal size when the request names none
)

type identityServer struct {
	csi.UnimplementedIdentityServer
	*driver
}

type controllerServer struct {
	csi.UnimplementedControllerServer
	*driver
}

type groupControllerServer struct {
	csi.UnimplementedGroupControllerServer
	*driver
}

type nodeServer struct {
	csi.UnimplementedNodeServer
	*driver
}

func errorf(c codes.Code, format string, args ...any) error { return status.Errorf(c, format, args...) }

func internal(err error) error { return status.Error(codes.Internal, err.Error()) }

// ---- Identity

func (s *identityServer) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: s.name, VendorVersion: vendorVersion}, nil
}

func (s *identityServer) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	svc := func(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		svc(csi.PluginCapability_Service_CONTROLLER_SERVICE),
		svc(csi.PluginCapability_Service_GROUP_CONTROLLER_SERVICE),
	}}, nil
}

func (s *identityServer) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// ---- Controller

func (s *controllerServer) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// checkCapabilities accepts mount volumes in any access mode; a directory cannot be a block device.
func checkCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return errorf(codes.InvalidArgument, "volume_capabilities are required")
	}
	for _, c := range caps {
		switch {
		case c.GetAccessMode() == nil || c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_UNKNOWN:
			return errorf(codes.InvalidArgument, "volume capability without an access mode")
		case c.GetBlock() != nil:
			return errorf(codes.InvalidArgument, "block volumes are not supported: volumes are directories")
		case c.GetMount() == nil:
			return errorf(codes.InvalidArgument, "volume capability without an access type")
		}
	}
	return nil
}

// capacityFor is the nominal capacity for a capacity range (nothing enforces it).
func capacityFor(r *csi.CapacityRange) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	switch {
	case req < 0 || lim < 0:
		return 0, errorf(codes.InvalidArgument, "negative capacity range")
	case lim > 0 && req > lim:
		return 0, errorf(codes.InvalidArgument, "required_bytes %d > limit_bytes %d", req, lim)
	case req > 0:
		return req, nil
	case lim > 0 && lim < defaultCapacity:
		return lim, nil
	}
	return defaultCapacity, nil
}

func fits(capacity int64, r *csi.CapacityRange) bool {
	return capacity >= r.GetRequiredBytes() && (r.GetLimitBytes() == 0 || capacity <= r.GetLimitBytes())
}

func (s *controllerServer) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, errorf(codes.InvalidArgument, "name is required")
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	capacity, err := capacityFor(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	fromSnap := req.GetVolumeContentSource().GetSnapshot().GetSnapshotId()
	fromVol := req.GetVolumeContentSource().GetVolume().GetVolumeId()
	if src := req.GetVolumeContentSource(); src != nil && fromSnap == "" && fromVol == "" {
		return nil, errorf(codes.InvalidArgument, "volume_content_source names no snapshot or volume")
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range s.volumes {
		if v.Name != req.GetName() {
			continue
		}
		if !fits(v.CapacityBytes, req.GetCapacityRange()) || !maps.Equal(v.Parameters, req.GetParameters()) ||
			v.SourceSnapshotID != fromSnap || v.SourceVolumeID != fromVol {
			return nil, errorf(codes.AlreadyExists, "volume %q exists as %s with other capacity, parameters or source", v.Name, v.ID)
		}
		return &csi.CreateVolumeResponse{Volume: s.csiVolume(v)}, nil
	}

	srcDir, srcSize := "", int64(0)
	switch {
	case fromSnap != "":
		snap, ok := s.snapshots[fromSnap]
		if !ok {
			return nil, errorf(codes.NotFound, "source snapshot %q not found", fromSnap)
		}
		srcDir, srcSize = s.snapshotDir(snap.ID), snap.SizeBytes
	case fromVol != "":
		src, ok := s.volumes[fromVol]
		if !ok {
			return nil, errorf(codes.NotFound, "source volume %q not found", fromVol)
		}
		srcDir, srcSize = s.volumeDir(src.ID), src.CapacityBytes
	}
	// A copy is at least as large as its source, and by default exactly as large.
	if srcSize > 0 && (capacity < srcSize || req.GetCapacityRange().GetRequiredBytes() == 0) {
		if !fits(srcSize, req.GetCapacityRange()) {
			return nil, errorf(codes.OutOfRange, "the source needs %d bytes, more than limit_bytes allows", srcSize)
		}
		capacity = srcSize
	}

	v := &volume{ID: newID("vol"), Name: req.GetName(), CapacityBytes: capacity, Parameters: req.GetParameters(),
		SourceSnapshotID: fromSnap, SourceVolumeID: fromVol, CreationTime: time.Now().UTC()}
	if err := makeDir(srcDir, s.volumeDir(v.ID)); err != nil {
		return nil, internal(err)
	}
	if err := writeJSON(s.volumeRecord(v.ID), v); err != nil {
		os.RemoveAll(s.volumeDir(v.ID))
		return nil, internal(err)
	}
	s.volumes[v.ID] = v
	return &csi.CreateVolumeResponse{Volume: s.csiVolume(v)}, nil
}

func (d *driver) csiVolume(v *volume) *csi.Volume {
	out := &csi.Volume{VolumeId: v.ID, CapacityBytes: v.CapacityBytes,
		VolumeContext: map[string]string{"path": d.volumeDir(v.ID)}}
	switch {
	case v.SourceSnapshotID != "":
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: v.SourceSnapshotID}}}
	case v.SourceVolumeID != "":
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.SourceVolumeID}}}
	}
	return out
}

func (s *controllerServer) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, errorf(codes.InvalidArgument, "volume_id is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.volumes[req.GetVolumeId()]
	if !ok {
		return &csi.DeleteVolumeResponse{}, nil
	}
	// Snapshots are full copies: they outlive their source volume.
	if err := os.Remove(s.volumeRecord(v.ID)); err != nil && !os.IsNotExist(err) {
		return nil, internal(err)
	}
	delete(s.volumes, v.ID)
	if err := os.RemoveAll(s.volumeDir(v.ID)); err != nil {
		return nil, internal(err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (s *controllerServer) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, errorf(codes.InvalidArgument, "volume_id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, errorf(codes.InvalidArgument, "volume_capabilities are required")
	}
	s.mu.Lock()
	_, ok := s.volumes[req.GetVolumeId()]
	s.mu.Unlock()
	if !ok {
		return nil, errorf(codes.NotFound, "volume %q not found", req.GetVolumeId())
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters: req.GetParameters(), MutableParameters: req.GetMutableParameters(),
	}}, nil
}

// page cuts one page out of items: starting_token is the index of its first entry.
func page[T any](items []T, token string, max int32) ([]T, string, error) {
	start := 0
	if token != "" {
		n, err := strconv.Atoi(token)
		if err != nil || n < 0 || n > len(items) {
			return nil, "", errorf(codes.Aborted, "invalid starting_token %q", token)
		}
		start = n
	}
	if max < 0 {
		return nil, "", errorf(codes.InvalidArgument, "negative max_entries")
	}
	if max > 0 && len(items)-start > int(max) {
		return items[start : start+int(max)], strconv.Itoa(start + int(max)), nil
	}
	return items[start:], "", nil
}

func (s *controllerServer) ListVolumes(_ context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vols, next, err := page(sortedBy(s.volumes, func(v *volume) (time.Time, string) { return v.CreationTime, v.ID }),
		req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, v := range vols {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: s.csiVolume(v)})
	}
	return resp, nil
}

func (s *controllerServer) GetCapacity(context.Context, *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.root, &st); err != nil {
		return nil, internal(err)
	}
	return &csi.GetCapacityResponse{AvailableCapacity: int64(st.Bavail) * int64(st.Bsize)}, nil
}

func csiSnapshot(sn *snapshot) *csi.Snapshot {
	return &csi.Snapshot{SnapshotId: sn.ID, SourceVolumeId: sn.SourceVolumeID, SizeBytes: sn.SizeBytes,
		CreationTime: timestamppb.New(sn.CreationTime), ReadyToUse: true, GroupSnapshotId: sn.GroupSnapshotID}
}

// takeSnapshot copies volume v to a new snapshot directory; the caller writes the record.
func (d *driver) takeSnapshot(v *volume, name, groupID string, params map[string]string, at time.Time) (*snapshot, error) {
	sn := &snapshot{ID: newID("snap"), Name: name, SourceVolumeID: v.ID, SizeBytes: v.CapacityBytes,
		Parameters: params, GroupSnapshotID: groupID, CreationTime: at}
	if err := makeDir(d.volumeDir(v.ID), d.snapshotDir(sn.ID)); err != nil {
		return nil, err
	}
	return sn, nil
}

func (s *controllerServer) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, errorf(codes.InvalidArgument, "name is required")
	}
	if req.GetSourceVolumeId() == "" {
		return nil, errorf(codes.InvalidArgument, "source_volume_id is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sn := range s.snapshots {
		if sn.Name != req.GetName() {
			continue
		}
		if sn.SourceVolumeID != req.GetSourceVolumeId() || !maps.Equal(sn.Parameters, req.GetParameters()) {
			return nil, errorf(codes.AlreadyExists, "snapshot %q exists as %s of volume %s", sn.Name, sn.ID, sn.SourceVolumeID)
		}
		return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(sn)}, nil
	}
	v, ok := s.volumes[req.GetSourceVolumeId()]
	if !ok {
		return nil, errorf(codes.NotFound, "source volume %q not found", req.GetSourceVolumeId())
	}
	sn, err := s.takeSnapshot(v, req.GetName(), "", req.GetParameters(), time.Now().UTC())
	if err != nil {
		return nil, internal(err)
	}
	if err := writeJSON(s.snapshotRecord(sn.ID), sn); err != nil {
		os.RemoveAll(s.snapshotDir(sn.ID))
		return nil, internal(err)
	}
	s.snapshots[sn.ID] = sn
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(sn)}, nil
}

// removeSnapshot deletes a snapshot's record, then its directory.
func (d *driver) removeSnapshot(id string) error {
	if err := os.Remove(d.snapshotRecord(id)); err != nil && !os.IsNotExist(err) {
		return err
	}
	delete(d.snapshots, id)
	return os.RemoveAll(d.snapshotDir(id))
}

func (s *controllerServer) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, errorf(codes.InvalidArgument, "snapshot_id is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sn, ok := s.snapshots[req.GetSnapshotId()]
	if !ok {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if _, inGroup := s.groups[sn.GroupSnapshotID]; inGroup {
		return nil, errorf(codes.InvalidArgument, "snapshot %s belongs to group snapshot %s: delete the group", sn.ID, sn.GroupSnapshotID)
	}
	if err := s.removeSnapshot(sn.ID); err != nil {
		return nil, internal(err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

func (s *controllerServer) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var matching []*snapshot
	for _, sn := range sortedBy(s.snapshots, func(sn *snapshot) (time.Time, string) { return sn.CreationTime, sn.ID }) {
		if (req.GetSnapshotId() == "" || sn.ID == req.GetSnapshotId()) &&
			(req.GetSourceVolumeId() == "" || sn.SourceVolumeID == req.GetSourceVolumeId()) {
			matching = append(matching, sn)
		}
	}
	snaps, next, err := page(matching, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, sn := range snaps {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(sn)})
	}
	return resp, nil
}

func (s *controllerServer) GetSnapshot(_ context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, errorf(codes.InvalidArgument, "snapshot_id is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sn, ok := s.snapshots[req.GetSnapshotId()]
	if !ok {
		return nil, errorf(codes.NotFound, "snapshot %q not found", req.GetSnapshotId())
	}
	return &csi.GetSnapshotResponse{Snapshot: csiSnapshot(sn)}, nil
}

// ---- GroupController

func (s *groupControllerServer) GroupControllerGetCapabilities(context.Context, *csi.GroupControllerGetCapabilitiesRequest) (*csi.GroupControllerGetCapabilitiesResponse, error) {
	return &csi.GroupControllerGetCapabilitiesResponse{Capabilities: []*csi.GroupControllerServiceCapability{{
		Type: &csi.GroupControllerServiceCapability_Rpc{Rpc: &csi.GroupControllerServiceCapability_RPC{
			Type: csi.GroupControllerServiceCapability_RPC_CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT}},
	}}}, nil
}

func sameSet(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}

func (d *driver) csiGroup(g *group) *csi.VolumeGroupSnapshot {
	out := &csi.VolumeGroupSnapshot{GroupSnapshotId: g.ID, CreationTime: timestamppb.New(g.CreationTime), ReadyToUse: true}
	for _, id := range g.SnapshotIDs {
		if sn, ok := d.snapshots[id]; ok {
			out.Snapshots = append(out.Snapshots, csiSnapshot(sn))
		} else {
			out.ReadyToUse = false // a member lost by an interrupted delete
		}
	}
	return out
}

// CreateVolumeGroupSnapshot copies every source volume while holding the driver's lock, and gives
// all members one creation time. The lock orders it against every other CSI call; it does not
// stop a process writing into a volume directory directly during the copies.
func (s *groupControllerServer) CreateVolumeGroupSnapshot(_ context.Context, req *csi.CreateVolumeGroupSnapshotRequest) (*csi.CreateVolumeGroupSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, errorf(codes.InvalidArgument, "name is required")
	}
	ids := req.GetSourceVolumeIds()
	if len(ids) == 0 {
		return nil, errorf(codes.InvalidArgument, "source_volume_ids are required")
	}
	if len(slices.Compact(slices.Sorted(slices.Values(ids)))) != len(ids) {
		return nil, errorf(codes.InvalidArgument, "source_volume_ids name a volume twice")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.groups {
		if g.Name != req.GetName() {
			continue
		}
		if !sameSet(g.SourceVolumeIDs, ids) || !maps.Equal(g.Parameters, req.GetParameters()) {
			return nil, errorf(codes.AlreadyExists, "group snapshot %q exists as %s of other volumes or parameters", g.Name, g.ID)
		}
		return &csi.CreateVolumeGroupSnapshotResponse{GroupSnapshot: s.csiGroup(g)}, nil
	}
	var vols []*volume
	for _, id := range ids {
		v, ok := s.volumes[id]
		if !ok {
			return nil, errorf(codes.NotFound, "source volume %q not found", id)
		}
		vols = append(vols, v)
	}

	g := &group{ID: newID("group"), Name: req.GetName(), SourceVolumeIDs: ids, Parameters: req.GetParameters(),
		CreationTime: time.Now().UTC()}
	var taken []*snapshot
	undo := func(err error) error {
		for _, sn := range taken {
			os.Remove(s.snapshotRecord(sn.ID))
			os.RemoveAll(s.snapshotDir(sn.ID))
		}
		return internal(err)
	}
	for _, v := range vols {
		sn, err := s.takeSnapshot(v, "", g.ID, req.GetParameters(), g.CreationTime)
		if err != nil {
			return nil, undo(err)
		}
		taken = append(taken, sn)
		g.SnapshotIDs = append(g.SnapshotIDs, sn.ID)
	}
	for _, sn := range taken {
		if err := writeJSON(s.snapshotRecord(sn.ID), sn); err != nil {
			return nil, undo(err)
		}
	}
	if err := writeJSON(s.groupRecord(g.ID), g); err != nil {
		return nil, undo(err)
	}
	for _, sn := range taken {
		s.snapshots[sn.ID] = sn
	}
	s.groups[g.ID] = g
	return &csi.CreateVolumeGroupSnapshotResponse{GroupSnapshot: s.csiGroup(g)}, nil
}

func (s *groupControllerServer) GetVolumeGroupSnapshot(_ context.Context, req *csi.GetVolumeGroupSnapshotRequest) (*csi.GetVolumeGroupSnapshotResponse, error) {
	if req.GetGroupSnapshotId() == "" {
		return nil, errorf(codes.InvalidArgument, "group_snapshot_id is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.groups[req.GetGroupSnapshotId()]
	if !ok {
		return nil, errorf(codes.NotFound, "group snapshot %q not found", req.GetGroupSnapshotId())
	}
	if len(req.GetSnapshotIds()) > 0 && !sameSet(g.SnapshotIDs, req.GetSnapshotIds()) {
		return nil, errorf(codes.InvalidArgument, "snapshot_ids do not match the members of group snapshot %s", g.ID)
	}
	return &csi.GetVolumeGroupSnapshotResponse{GroupSnapshot: s.csiGroup(g)}, nil
}

// DeleteVolumeGroupSnapshot removes the members first and the group record last, so an
// interrupted delete leaves a group that a retry finishes.
func (s *groupControllerServer) DeleteVolumeGroupSnapshot(_ context.Context, req *csi.DeleteVolumeGroupSnapshotRequest) (*csi.DeleteVolumeGroupSnapshotResponse, error) {
	if req.GetGroupSnapshotId() == "" {
		return nil, errorf(codes.InvalidArgument, "group_snapshot_id is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.groups[req.GetGroupSnapshotId()]
	if !ok {
		return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
	}
	if len(req.GetSnapshotIds()) > 0 && !sameSet(g.SnapshotIDs, req.GetSnapshotIds()) {
		return nil, errorf(codes.InvalidArgument, "snapshot_ids do not match the members of group snapshot %s", g.ID)
	}
	for _, id := range g.SnapshotIDs {
		if err := s.removeSnapshot(id); err != nil {
			return nil, internal(err)
		}
	}
	if err := os.Remove(s.groupRecord(g.ID)); err != nil && !os.IsNotExist(err) {
		return nil, internal(err)
	}
	delete(s.groups, g.ID)
	return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
}

// ---- Node: there is no kubelet (KWOK nodes), so nothing is mounted. NodePublishVolume makes the
// target path a symlink to the volume directory; NodeUnpublishVolume removes it.

func (s *nodeServer) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: s.nodeID}, nil
}

func (s *nodeServer) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

func (s *nodeServer) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	switch {
	case req.GetVolumeId() == "":
		return nil, errorf(codes.InvalidArgument, "volume_id is required")
	case req.GetTargetPath() == "":
		return nil, errorf(codes.InvalidArgument, "target_path is required")
	case req.GetVolumeCapability() == nil:
		return nil, errorf(codes.InvalidArgument, "volume_capability is required")
	}
	if err := checkCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()}); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.volumes[req.GetVolumeId()]; !ok {
		return nil, errorf(codes.NotFound, "volume %q not found", req.GetVolumeId())
	}
	dir, target := s.volumeDir(req.GetVolumeId()), req.GetTargetPath()
	if fi, err := os.Lstat(target); err == nil {
		if link, err := os.Readlink(target); err == nil && link == dir {
			return &csi.NodePublishVolumeResponse{}, nil // already published here
		}
		if !fi.IsDir() || os.Remove(target) != nil { // an empty directory made by the CO is replaced
			return nil, errorf(codes.AlreadyExists, "target path %s is in use by something else", target)
		}
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return nil, internal(err)
	}
	if err := os.Symlink(dir, target); err != nil {
		return nil, internal(err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (s *nodeServer) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	switch {
	case req.GetVolumeId() == "":
		return nil, errorf(codes.InvalidArgument, "volume_id is required")
	case req.GetTargetPath() == "":
		return nil, errorf(codes.InvalidArgument, "target_path is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fi, err := os.Lstat(req.GetTargetPath())
	if os.IsNotExist(err) {
		return &csi.NodeUnpublishVolumeResponse{}, nil
	}
	if err == nil && fi.Mode()&os.ModeSymlink == 0 && !fi.IsDir() {
		return nil, errorf(codes.FailedPrecondition, "target path %s is not a published volume", req.GetTargetPath())
	}
	if err == nil {
		err = os.Remove(req.GetTargetPath()) // the link, or an empty directory; never a volume's files
	}
	if err != nil {
		return nil, internal(err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}
