package deploy_test

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// podFS is a pod's filesystem as the kubelet would lay it out, built in a
// temporary directory: one directory per volume, filled from the
// ConfigMaps and Secrets the way the kubelet writes them (defaultMode or an
// item's mode, group fsGroup and group-readable when fsGroup is set), and
// each container's view of it through its volumeMounts. Everything outside
// a mount is the image's read-only root filesystem, which the test does
// not have: a path there does not resolve.
//
// File owners are recorded, not applied (the test is not root), so
// readable answers for the pod's users from the recorded owner and mode.
type podFS struct {
	root    string
	spec    *corev1.PodSpec
	volumes map[string]*corev1.Volume
	owners  map[string]owner // host path -> owner
}

type owner struct{ uid, gid int64 }

// The kubelet's file modes (pkg/volume/util: defaultMode 0644; with
// fsGroup, read-only volumes get group read, pkg/volume/volume_linux.go).
const (
	kubeletDefaultMode = 0o644
	kubeletFSGroupRO   = 0o440
)

// newPodFS materializes every volume of spec from m's ConfigMaps and
// Secrets. A volume kind the test does not emulate is an error.
func newPodFS(t *testing.T, m *manifests, spec *corev1.PodSpec) *podFS {
	t.Helper()
	p := &podFS{root: t.TempDir(), spec: spec, volumes: map[string]*corev1.Volume{}, owners: map[string]owner{}}
	fsGroup := spec.SecurityContext.FSGroup
	for i := range spec.Volumes {
		v := &spec.Volumes[i]
		p.volumes[v.Name] = v
		dir := p.volumeDir(v.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var (
			data        map[string][]byte
			items       []corev1.KeyToPath
			defaultMode *int32
			what        string
		)
		switch {
		case v.ConfigMap != nil:
			what = "ConfigMap " + v.ConfigMap.Name
			cm, ok := m.configMaps[v.ConfigMap.Name]
			if !ok {
				t.Errorf("volume %s: %s is not among the manifests", v.Name, what)
				continue
			}
			data = map[string][]byte{}
			for k, s := range cm.Data {
				data[k] = []byte(s)
			}
			for k, b := range cm.BinaryData {
				data[k] = b
			}
			items, defaultMode = v.ConfigMap.Items, v.ConfigMap.DefaultMode
		case v.Secret != nil:
			what = "Secret " + v.Secret.SecretName
			s, ok := m.secrets[v.Secret.SecretName]
			if !ok {
				t.Errorf("volume %s: %s is not among the manifests", v.Name, what)
				continue
			}
			data = map[string][]byte{}
			for _, k := range secretKeys(s) {
				data[k], _ = secretValue(s, k)
			}
			items, defaultMode = v.Secret.Items, v.Secret.DefaultMode
		case v.EmptyDir != nil:
			// Created 0777 by the kubelet; with fsGroup, setgid to it.
			os.Chmod(dir, 0o777|fs.ModeSetgid)
			gid := int64(0)
			if fsGroup != nil {
				gid = *fsGroup
			}
			p.owners[dir] = owner{0, gid}
			continue
		default:
			t.Errorf("volume %s: only configMap, secret and emptyDir volumes are emulated", v.Name)
			continue
		}
		if len(items) == 0 {
			for _, k := range slices.Sorted(mapKeys(data)) {
				items = append(items, corev1.KeyToPath{Key: k, Path: k})
			}
		}
		for _, it := range items {
			b, ok := data[it.Key]
			if !ok {
				t.Errorf("volume %s: %s has no key %q", v.Name, what, it.Key)
				continue
			}
			mode := int32(kubeletDefaultMode)
			if defaultMode != nil {
				mode = *defaultMode
			}
			if it.Mode != nil {
				mode = *it.Mode
			}
			o := owner{0, 0}
			if fsGroup != nil {
				mode |= kubeletFSGroupRO
				o.gid = *fsGroup
			}
			file := filepath.Join(dir, filepath.FromSlash(it.Path))
			if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(file, fs.FileMode(mode)&fs.ModePerm); err != nil {
				t.Fatal(err)
			}
			p.owners[file] = o
		}
	}
	return p
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func (p *podFS) volumeDir(name string) string { return filepath.Join(p.root, "volumes", name) }

// resolved is a container path resolved through its mounts.
type resolved struct {
	host   string // the file in the test's temporary directory
	mount  corev1.VolumeMount
	volume *corev1.Volume
}

// resolve maps an absolute path in container c to the host file behind it,
// through the mount with the longest matching mountPath. ok is false when
// no mount covers the path: it is on the image's root filesystem.
func (p *podFS) resolve(c *corev1.Container, pth string) (r resolved, ok bool) {
	if !path.IsAbs(pth) {
		return r, false
	}
	pth = path.Clean(pth)
	best := -1
	for _, vm := range c.VolumeMounts {
		mp := path.Clean(vm.MountPath)
		if (pth == mp || strings.HasPrefix(pth, mp+"/")) && len(mp) > best {
			if vm.SubPath != "" || vm.SubPathExpr != "" {
				continue // not emulated; newPodFS's callers refuse it
			}
			best = len(mp)
			r.mount = vm
		}
	}
	if best < 0 {
		return r, false
	}
	r.volume = p.volumes[r.mount.Name]
	rel := strings.TrimPrefix(pth, path.Clean(r.mount.MountPath))
	r.host = filepath.Join(p.volumeDir(r.mount.Name), filepath.FromSlash(rel))
	return r, r.volume != nil
}

// user returns the uid and groups container c runs as.
func (p *podFS) user(c *corev1.Container) (uid int64, groups []int64) {
	psc, csc := p.spec.SecurityContext, c.SecurityContext
	uid, gid := int64(-1), int64(-1)
	if psc != nil && psc.RunAsUser != nil {
		uid = *psc.RunAsUser
	}
	if csc != nil && csc.RunAsUser != nil {
		uid = *csc.RunAsUser
	}
	if psc != nil && psc.RunAsGroup != nil {
		gid = *psc.RunAsGroup
	}
	if csc != nil && csc.RunAsGroup != nil {
		gid = *csc.RunAsGroup
	}
	groups = []int64{gid}
	if psc != nil {
		if psc.FSGroup != nil {
			groups = append(groups, *psc.FSGroup)
		}
		groups = append(groups, psc.SupplementalGroups...)
	}
	return uid, groups
}

// readable reports whether container c's user may read the host file.
func (p *podFS) readable(c *corev1.Container, host string) error {
	fi, err := os.Stat(host)
	if err != nil {
		return err
	}
	o, ok := p.owners[host]
	if !ok {
		return fmt.Errorf("no recorded owner for %s", host)
	}
	uid, groups := p.user(c)
	perm := fi.Mode().Perm()
	switch {
	case uid == o.uid && perm&0o400 != 0,
		slices.Contains(groups, o.gid) && perm&0o040 != 0,
		perm&0o004 != 0:
		return nil
	}
	return fmt.Errorf("mode %04o, owner %d:%d: not readable by user %d (groups %v)", perm, o.uid, o.gid, uid, groups)
}

// installCmd is an init container's `install -m MODE SRC DST`, the one
// command the test emulates.
type installCmd struct {
	mode     fs.FileMode
	src, dst string
}

func parseInstall(cmd []string) (installCmd, error) {
	if len(cmd) != 5 || path.Base(cmd[0]) != "install" || cmd[1] != "-m" {
		return installCmd{}, fmt.Errorf("command %q: the test emulates only install -m MODE SRC DST", cmd)
	}
	mode, err := strconv.ParseUint(cmd[2], 8, 32)
	if err != nil {
		return installCmd{}, fmt.Errorf("command %q: mode %q is not octal", cmd, cmd[2])
	}
	return installCmd{fs.FileMode(mode), cmd[3], cmd[4]}, nil
}

// runInit runs init container c's install on the pod filesystem: the
// source must be readable by c's user and the destination on a writable
// emptyDir; the copy belongs to c's user.
func (p *podFS) runInit(t *testing.T, c *corev1.Container) {
	t.Helper()
	in, err := parseInstall(slices.Concat(c.Command, c.Args))
	if err != nil {
		t.Errorf("init container %s: %v", c.Name, err)
		return
	}
	src, ok := p.resolve(c, in.src)
	if !ok {
		t.Errorf("init container %s: %s is on no volume", c.Name, in.src)
		return
	}
	if err := p.readable(c, src.host); err != nil {
		t.Errorf("init container %s: %s: %v", c.Name, in.src, err)
		return
	}
	dst, ok := p.resolve(c, in.dst)
	switch {
	case !ok:
		t.Errorf("init container %s: %s is on no volume (the root filesystem is read-only)", c.Name, in.dst)
		return
	case dst.mount.ReadOnly || dst.volume.EmptyDir == nil:
		t.Errorf("init container %s: %s is not on a writable emptyDir", c.Name, in.dst)
		return
	}
	b, err := os.ReadFile(src.host)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst.host, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dst.host, in.mode); err != nil {
		t.Fatal(err)
	}
	uid, groups := p.user(c)
	gid := groups[0]
	if dirOwner, ok := p.owners[filepath.Dir(dst.host)]; ok && dirOwner.gid != 0 {
		gid = dirOwner.gid // setgid directory
	}
	p.owners[dst.host] = owner{uid, gid}
}

// installSource returns the host file an init container's install copies
// to host, or host itself when none does.
func (p *podFS) installSource(host string) string {
	for i := range p.spec.InitContainers {
		c := &p.spec.InitContainers[i]
		in, err := parseInstall(slices.Concat(c.Command, c.Args))
		if err != nil {
			continue
		}
		dst, ok1 := p.resolve(c, in.dst)
		src, ok2 := p.resolve(c, in.src)
		if ok1 && ok2 && dst.host == host {
			return src.host
		}
	}
	return host
}
