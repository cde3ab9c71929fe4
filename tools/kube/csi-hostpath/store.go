package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// On disk, under root:
//
//	volumes/<volume-id>/        the volume's files
//	volumes/<volume-id>.json    its volume record
//	snapshots/<snapshot-id>/    a full copy of the source volume
//	snapshots/<snapshot-id>.json
//	groups/<group-id>.json      a group snapshot: its member snapshot ids
//
// A record is written (atomically: temp file + rename) only after its directory is complete, and
// removed before its directory, so a record on disk always names a whole directory. Directories
// and temp files without a record are left-overs of an interrupted call and are removed at start.

type volume struct {
	ID               string            `json:"id"`
	Name             string            `json:"name"`
	CapacityBytes    int64             `json:"capacity_bytes"`
	Parameters       map[string]string `json:"parameters,omitempty"`
	SourceSnapshotID string            `json:"source_snapshot_id,omitempty"`
	SourceVolumeID   string            `json:"source_volume_id,omitempty"`
	CreationTime     time.Time         `json:"creation_time"`
}

type snapshot struct {
	ID              string            `json:"id"`
	Name            string            `json:"name,omitempty"` // empty for members of a group snapshot
	SourceVolumeID  string            `json:"source_volume_id"`
	SizeBytes       int64             `json:"size_bytes"` // the source volume's capacity: the size a restore needs
	Parameters      map[string]string `json:"parameters,omitempty"`
	GroupSnapshotID string            `json:"group_snapshot_id,omitempty"`
	CreationTime    time.Time         `json:"creation_time"`
}

type group struct {
	ID              string            `json:"id"`
	Name            string            `json:"name"`
	SourceVolumeIDs []string          `json:"source_volume_ids"`
	SnapshotIDs     []string          `json:"snapshot_ids"` // in the order of SourceVolumeIDs
	Parameters      map[string]string `json:"parameters,omitempty"`
	CreationTime    time.Time         `json:"creation_time"`
}

type driver struct {
	name, nodeID, root string

	mu        sync.Mutex // serializes every call that reads or changes the maps or the disk
	volumes   map[string]*volume
	snapshots map[string]*snapshot
	groups    map[string]*group
}

var idPattern = regexp.MustCompile(`^(vol|snap|group)-[0-9a-f]{32}$`)

func newID(kind string) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return kind + "-" + hex.EncodeToString(b)
}

// newDriver opens (creating if need be) the state under root and loads every record.
func newDriver(root, name, nodeID string) (*driver, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	d := &driver{name: name, nodeID: nodeID, root: root,
		volumes: map[string]*volume{}, snapshots: map[string]*snapshot{}, groups: map[string]*group{}}
	if err := load(filepath.Join(root, "volumes"), true, d.volumes, func(v *volume) string { return v.ID }); err != nil {
		return nil, err
	}
	if err := load(filepath.Join(root, "snapshots"), true, d.snapshots, func(s *snapshot) string { return s.ID }); err != nil {
		return nil, err
	}
	if err := load(filepath.Join(root, "groups"), false, d.groups, func(g *group) string { return g.ID }); err != nil {
		return nil, err
	}
	return d, nil
}

// load reads every <id>.json record in dir into m, and removes what no record accounts for.
func load[T any](dir string, withData bool, m map[string]*T, idOf func(*T) string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		id, isRecord := strings.CutSuffix(e.Name(), ".json")
		if !isRecord || !idPattern.MatchString(id) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		rec := new(T)
		if err := json.Unmarshal(b, rec); err != nil {
			return fmt.Errorf("%s: %w", filepath.Join(dir, e.Name()), err)
		}
		if idOf(rec) != id {
			return fmt.Errorf("%s: record holds id %q", filepath.Join(dir, e.Name()), idOf(rec))
		}
		if withData {
			if fi, err := os.Stat(filepath.Join(dir, id)); err != nil || !fi.IsDir() {
				log.Printf("csi-hostpath: dropping %s: its directory is gone", filepath.Join(dir, e.Name()))
				continue
			}
		}
		m[id] = rec
	}
	for _, e := range entries {
		stem := strings.TrimSuffix(e.Name(), ".json")
		if _, known := m[stem]; known || !(strings.HasPrefix(e.Name(), ".tmp-") || idPattern.MatchString(stem)) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func (d *driver) volumeDir(id string) string   { return filepath.Join(d.root, "volumes", id) }
func (d *driver) snapshotDir(id string) string { return filepath.Join(d.root, "snapshots", id) }

func (d *driver) volumeRecord(id string) string   { return d.volumeDir(id) + ".json" }
func (d *driver) snapshotRecord(id string) string { return d.snapshotDir(id) + ".json" }
func (d *driver) groupRecord(id string) string    { return filepath.Join(d.root, "groups", id+".json") }

// writeJSON replaces path with v's JSON atomically: a reader sees the old record or the new one.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// makeDir creates the directory dst, empty (src == "") or as a copy of src, via a temp name so
// that dst only ever appears complete.
func makeDir(src, dst string) error {
	tmp := filepath.Join(filepath.Dir(dst), ".tmp-"+filepath.Base(dst))
	os.RemoveAll(tmp)
	var err error
	if src == "" {
		// World-writable like upstream csi-driver-host-path: whoever uses the volume may write.
		if err = os.Mkdir(tmp, 0o777); err == nil {
			err = os.Chmod(tmp, 0o777)
		}
	} else {
		err = copyTree(src, tmp)
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.RemoveAll(tmp)
	}
	return err
}

// copyTree copies the tree at src to dst (which must not exist): regular files byte for byte,
// directories, symlinks as links; mode bits, modification times and (where permitted) owners
// are kept. Sockets, devices and fifos are skipped.
func copyTree(src, dst string) error {
	type dirAttrs struct {
		path string
		info fs.FileInfo
	}
	var dirs []dirAttrs // directory attributes are set last: a read-only directory takes no children
	err := filepath.WalkDir(src, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := e.Info()
		if err != nil {
			return err
		}
		switch mode := info.Mode(); {
		case mode.IsDir():
			if err := os.Mkdir(target, 0o700); err != nil {
				return err
			}
			dirs = append(dirs, dirAttrs{target, info})
		case mode&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
			chown(target, info)
		case mode.IsRegular():
			if err := copyFile(p, target, info); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		chown(dirs[i].path, dirs[i].info)
		if err := os.Chmod(dirs[i].path, modeBits(dirs[i].info)); err != nil {
			return err
		}
		os.Chtimes(dirs[i].path, dirs[i].info.ModTime(), dirs[i].info.ModTime())
	}
	return nil
}

func copyFile(src, dst string, info fs.FileInfo) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	chown(dst, info) // before chmod: chown clears setuid/setgid bits
	if err := os.Chmod(dst, modeBits(info)); err != nil {
		return err
	}
	return os.Chtimes(dst, info.ModTime(), info.ModTime())
}

func modeBits(info fs.FileInfo) fs.FileMode {
	return info.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

// chown gives path the owner of info's file when the driver may (it runs as root or owns both);
// otherwise the copy keeps the driver's user.
func chown(path string, info fs.FileInfo) {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		os.Lchown(path, int(st.Uid), int(st.Gid))
	}
}

// sortedBy returns m's values ordered by creation time, then id: new entries go last, so list
// paging is stable while entries are added.
func sortedBy[T any](m map[string]*T, key func(*T) (time.Time, string)) []*T {
	out := make([]*T, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		ti, ii := key(out[i])
		tj, ij := key(out[j])
		if !ti.Equal(tj) {
			return ti.Before(tj)
		}
		return ii < ij
	})
	return out
}
