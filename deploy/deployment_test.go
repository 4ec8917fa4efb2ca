package deploy_test

import (
	"crypto/tls"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgcloak/pgcloak/config"
	"github.com/pgcloak/pgcloak/crypto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// serveArgv returns the command line container c runs: its command, or
// the image's entrypoint (every container here runs the Dockerfile's
// image), followed by its args.
func serveArgv(c *corev1.Container, df dockerfile) []string {
	argv := c.Command
	if len(argv) == 0 {
		argv = df.entrypoint
	}
	return slices.Concat(argv, c.Args)
}

// pgcloakContainer returns the container that runs `pgcloak serve` and
// the configuration file it names with -c/--config.
func pgcloakContainer(t *testing.T, spec *corev1.PodSpec, df dockerfile) (*corev1.Container, string) {
	t.Helper()
	for i := range spec.Containers {
		c := &spec.Containers[i]
		argv := serveArgv(c, df)
		if len(argv) < 2 || filepath.Base(argv[0]) != "pgcloak" || argv[1] != "serve" {
			continue
		}
		for j, a := range argv {
			if (a == "-c" || a == "--config") && j+1 < len(argv) {
				return c, argv[j+1]
			}
			if v, ok := strings.CutPrefix(a, "--config="); ok {
				return c, v
			}
		}
		t.Fatalf("container %s runs %q without -c FILE", c.Name, argv)
	}
	t.Fatal("no container runs pgcloak serve")
	return nil, ""
}

// containerPort resolves a probe's or a Service's port, by number or by
// name, to a port of container c.
func containerPort(c *corev1.Container, p intstr.IntOrString) (corev1.ContainerPort, bool) {
	for _, cp := range c.Ports {
		if (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) || (p.Type == intstr.String && p.StrVal != "" && cp.Name == p.StrVal) {
			return cp, true
		}
	}
	return corev1.ContainerPort{}, false
}

// sourceDurations reads time.Duration constants, written as N * time.Unit
// or time.Unit, from a Go file of the repository: what the drain must fit
// is what the code says, not a copy of it.
func sourceDurations(t *testing.T, file string, names ...string) map[string]time.Duration {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(repoRoot, file), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	units := map[string]time.Duration{"Millisecond": time.Millisecond, "Second": time.Second, "Minute": time.Minute}
	unit := func(e ast.Expr) (time.Duration, bool) {
		sel, ok := e.(*ast.SelectorExpr)
		if !ok {
			return 0, false
		}
		if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "time" {
			return 0, false
		}
		u, ok := units[sel.Sel.Name]
		return u, ok
	}
	got := map[string]time.Duration{}
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok {
			return true
		}
		for i, id := range vs.Names {
			if !slices.Contains(names, id.Name) || i >= len(vs.Values) {
				continue
			}
			switch v := vs.Values[i].(type) {
			case *ast.BinaryExpr:
				lit, ok1 := v.X.(*ast.BasicLit)
				u, ok2 := unit(v.Y)
				if n, err := strconv.Atoi(lit.Value); ok1 && ok2 && v.Op == token.MUL && err == nil {
					got[id.Name] = time.Duration(n) * u
				}
			default:
				if u, ok := unit(v); ok {
					got[id.Name] = u
				}
			}
		}
		return true
	})
	for _, name := range names {
		if _, ok := got[name]; !ok {
			t.Fatalf("%s: no constant %s written as N * time.Unit; update the test with the code", file, name)
		}
	}
	return got
}

// orUnset formats an optional number of a manifest.
func orUnset(p *int64) string {
	if p == nil {
		return "unset"
	}
	return strconv.FormatInt(*p, 10)
}

// TestDeploymentPod checks the pod template apart from pgcloak's
// configuration: replicas, user, hardening, resources and spread.
func TestDeploymentPod(t *testing.T) {
	m := loadManifests(t)
	df := readDockerfile(t)
	d := m.deployments[0]
	spec := &d.Spec.Template.Spec
	podLabels := d.Spec.Template.Labels

	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("replicas: got %v, want at least 2", d.Spec.Replicas)
	}
	if !selects(t, "Deployment selector", d.Spec.Selector, podLabels) {
		t.Errorf("Deployment selector %v does not select the pod template's labels %v", d.Spec.Selector, podLabels)
	}
	if ru := d.Spec.Strategy.RollingUpdate; ru != nil && ru.MaxUnavailable != nil && ru.MaxUnavailable.String() != "0" {
		t.Errorf("rollingUpdate.maxUnavailable: got %s, want 0 (a new replica is ready before an old one drains)", ru.MaxUnavailable)
	}

	t.Run("user", func(t *testing.T) {
		sc := spec.SecurityContext
		if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
			t.Fatal("pod securityContext.runAsNonRoot: want true")
		}
		if sc.RunAsUser == nil || *sc.RunAsUser != df.uid {
			t.Errorf("pod securityContext.runAsUser: got %s, want the Dockerfile's USER %d", orUnset(sc.RunAsUser), df.uid)
		}
		if sc.RunAsGroup == nil || *sc.RunAsGroup != df.gid {
			t.Errorf("pod securityContext.runAsGroup: got %s, want the Dockerfile's group %d", orUnset(sc.RunAsGroup), df.gid)
		}
		if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("pod securityContext.seccompProfile: got %v, want RuntimeDefault", sc.SeccompProfile)
		}
	})

	t.Run("service account", func(t *testing.T) {
		if _, ok := m.serviceAccounts[spec.ServiceAccountName]; !ok {
			t.Errorf("serviceAccountName %q is not among the manifests", spec.ServiceAccountName)
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Error("automountServiceAccountToken: want false; pgcloak calls no Kubernetes API")
		}
	})

	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		t.Run("container "+c.Name, func(t *testing.T) {
			sc := c.SecurityContext
			if sc == nil {
				t.Fatal("no securityContext")
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Error("allowPrivilegeEscalation: want false")
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Error("readOnlyRootFilesystem: want true")
			}
			if sc.Privileged != nil && *sc.Privileged {
				t.Error("privileged: want false")
			}
			if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
				t.Errorf("capabilities: got %+v, want drop [ALL] and nothing added", sc.Capabilities)
			}
			if sc.RunAsUser != nil && *sc.RunAsUser != df.uid {
				t.Errorf("runAsUser: got %d, want the Dockerfile's USER %d", *sc.RunAsUser, df.uid)
			}
			for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				req, okReq := c.Resources.Requests[res]
				lim, okLim := c.Resources.Limits[res]
				switch {
				case !okReq || !okLim:
					t.Errorf("resources: %s wants both a request and a limit", res)
				case req.Cmp(lim) > 0:
					t.Errorf("resources: %s request %s is above its limit %s", res, req.String(), lim.String())
				}
			}
			for _, vm := range c.VolumeMounts {
				if vm.SubPath != "" || vm.SubPathExpr != "" {
					t.Errorf("volumeMount %s: subPath mounts never see ConfigMap or Secret updates (and the test does not emulate them)", vm.Name)
				}
			}
		})
	}

	// The init container's install and the preStop sleep are coreutils
	// programs: a distroless or scratch image would not have them.
	if !strings.HasPrefix(df.base, "debian:") {
		t.Errorf("Dockerfile: runtime image %s; the pod runs install and sleep from Debian's coreutils, which it may not have", df.base)
	}

	t.Run("spread across nodes", func(t *testing.T) {
		spread := false
		for _, tsc := range spec.TopologySpreadConstraints {
			if tsc.TopologyKey == corev1.LabelHostname && tsc.WhenUnsatisfiable == corev1.DoNotSchedule {
				spread = selects(t, "topologySpreadConstraints "+tsc.TopologyKey, tsc.LabelSelector, podLabels)
			}
		}
		if a := spec.Affinity; a != nil && a.PodAntiAffinity != nil {
			for _, term := range a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
				if term.TopologyKey == corev1.LabelHostname {
					spread = spread || selects(t, "podAntiAffinity", term.LabelSelector, podLabels)
				}
			}
		}
		if !spread {
			t.Errorf("want replicas kept on different nodes: a %s topologySpreadConstraint (DoNotSchedule) or required podAntiAffinity that selects the pods", corev1.LabelHostname)
		}
	})
}

// TestPodConfig builds the pod's filesystem from the manifests, loads the
// ConfigMap's configuration with package config through it, and checks
// that the Deployment, Service, PodDisruptionBudget and ServiceMonitor
// agree with what the configuration and the code say.
func TestPodConfig(t *testing.T) {
	m := loadManifests(t)
	df := readDockerfile(t)
	d := m.deployments[0]
	spec := &d.Spec.Template.Spec
	c, configPath := pgcloakContainer(t, spec, df)
	pfs := newPodFS(t, m, spec)

	cfgFile, ok := pfs.resolve(c, configPath)
	if !ok {
		t.Fatalf("the configuration %s is on no volume of container %s", configPath, c.Name)
	}
	if err := pfs.readable(c, cfgFile.host); err != nil {
		t.Fatalf("configuration %s: %v", configPath, err)
	}
	cfg := loadPodConfig(t, m, c, cfgFile.host)

	// The master key: what is committed must not be a key, and a real one
	// put where the committed one is must reach pgcloak in a form
	// crypto.LoadLocalProvider accepts (mode 0600, readable by its user).
	if cfg.Keys.Provider == config.ProviderLocal && cfg.Keys.Local.MasterKeyFile != "" {
		t.Run("master key", func(t *testing.T) {
			key, ok := pfs.resolve(c, cfg.Keys.Local.MasterKeyFile)
			if !ok {
				t.Fatalf("keys.local.master_key_file %s is on no volume", cfg.Keys.Local.MasterKeyFile)
			}
			src := pfs.installSource(key.host)
			committed, err := os.ReadFile(src)
			if err != nil {
				t.Fatalf("keys.local.master_key_file %s: no file behind it (%v)", cfg.Keys.Local.MasterKeyFile, err)
			}
			placeholder := filepath.Join(t.TempDir(), "committed.key")
			os.WriteFile(placeholder, committed, 0o600)
			if _, err := crypto.LoadLocalProvider(placeholder); err == nil {
				t.Error("the master key committed to the repository is a usable key; commit a placeholder")
			}
			fresh := filepath.Join(t.TempDir(), "master.key")
			if err := crypto.WriteLocalMasterKey(fresh); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(fresh)
			fi, _ := os.Stat(src)
			os.WriteFile(src, b, 0o600)
			os.Chmod(src, fi.Mode().Perm())
			for i := range spec.InitContainers {
				pfs.runInit(t, &spec.InitContainers[i])
			}
			if err := pfs.readable(c, key.host); err != nil {
				t.Fatalf("keys.local.master_key_file %s: %v", cfg.Keys.Local.MasterKeyFile, err)
			}
			if _, err := crypto.LoadLocalProvider(key.host); err != nil {
				t.Errorf("keys.local.master_key_file as the pod gets it: %v", err)
			}
		})
	} else {
		for i := range spec.InitContainers {
			pfs.runInit(t, &spec.InitContainers[i])
		}
	}

	t.Run("files", func(t *testing.T) {
		files := map[string]string{"upstream.root_cert_file": cfg.Upstream.RootCertFile, "tenancy.jwt.public_key_file": cfg.Tenancy.JWT.PublicKeyFile}
		if tl := cfg.Listen.TLS; tl != nil {
			files["listen.tls.cert_file"], files["listen.tls.key_file"], files["listen.tls.client_ca_file"] = tl.CertFile, tl.KeyFile, tl.ClientCAFile
		}
		for i, cc := range cfg.Upstream.ClientCerts {
			files[fmt.Sprintf("upstream.client_certs[%d].cert_file", i)] = cc.CertFile
			files[fmt.Sprintf("upstream.client_certs[%d].key_file", i)] = cc.KeyFile
		}
		for key, file := range files {
			if file == "" {
				continue
			}
			r, ok := pfs.resolve(c, file)
			if !ok {
				t.Errorf("%s %s is on no volume of container %s", key, file, c.Name)
				continue
			}
			if err := pfs.readable(c, r.host); err != nil {
				t.Errorf("%s %s: %v", key, file, err)
			}
		}
		if cfg.Listen.TLS == nil {
			t.Error("listen.tls: want TLS for clients; the Service is reachable from the whole cluster")
		}
	})

	t.Run("writable paths", func(t *testing.T) {
		if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Fatal("readOnlyRootFilesystem is not set; this check assumes it")
		}
		// audit.output is the one file serve writes.
		if out := cfg.Audit.Output; out != "stdout" && out != "stderr" {
			r, ok := pfs.resolve(c, out)
			switch {
			case !ok:
				t.Errorf("audit.output %s is on the read-only root filesystem", out)
			case r.mount.ReadOnly || (r.volume.EmptyDir == nil && r.volume.PersistentVolumeClaim == nil):
				t.Errorf("audit.output %s: volume %s is not a writable emptyDir or claim", out, r.mount.Name)
			}
		}
		for _, vm := range c.VolumeMounts {
			v := pfs.volumes[vm.Name]
			if v != nil && !vm.ReadOnly && v.EmptyDir == nil && v.PersistentVolumeClaim == nil {
				t.Errorf("volumeMount %s at %s is writable but not an emptyDir; mount it readOnly", vm.Name, vm.MountPath)
			}
		}
	})

	listenPort := checkListenAddress(t, c, "listen.address", cfg.Listen.Address)
	adminPort := checkListenAddress(t, c, "admin.address", cfg.Admin.Address)

	t.Run("probes", func(t *testing.T) {
		code := sourceDurations(t, "cmd/pgcloak/admin.go", "readyCheckTimeout")
		for _, p := range []struct {
			kind, path string
			probe      *corev1.Probe
			required   bool
		}{
			{"livenessProbe", "/healthz", c.LivenessProbe, true},
			{"readinessProbe", "/readyz", c.ReadinessProbe, true},
			{"startupProbe", "/healthz", c.StartupProbe, false},
		} {
			if p.probe == nil {
				if p.required {
					t.Errorf("%s: missing; want GET %s on the admin port", p.kind, p.path)
				}
				continue
			}
			get := p.probe.HTTPGet
			if get == nil {
				t.Errorf("%s: want an httpGet of %s", p.kind, p.path)
				continue
			}
			if get.Path != p.path {
				t.Errorf("%s: got path %q, want %s", p.kind, get.Path, p.path)
			}
			if get.Scheme != "" && get.Scheme != corev1.URISchemeHTTP {
				t.Errorf("%s: got scheme %s; the admin listener speaks plain HTTP", p.kind, get.Scheme)
			}
			if cp, ok := containerPort(c, get.Port); !ok || cp.ContainerPort != adminPort {
				t.Errorf("%s: port %s is not admin.address's port %d", p.kind, get.Port.String(), adminPort)
			}
		}
		// /readyz waits up to readyCheckTimeout for its checks.
		if rp := c.ReadinessProbe; rp != nil && time.Duration(max(rp.TimeoutSeconds, 1))*time.Second <= code["readyCheckTimeout"] {
			t.Errorf("readinessProbe.timeoutSeconds: got %d, want more than /readyz's own check timeout %s", rp.TimeoutSeconds, code["readyCheckTimeout"])
		}
	})

	t.Run("drain", func(t *testing.T) {
		code := sourceDurations(t, "cmd/pgcloak/serve.go", "defaultShutdownTimeout")
		stop := sourceDurations(t, "cmd/pgcloak/admin.go", "adminStopTimeout")["adminStopTimeout"]
		drain := cfg.Listen.ShutdownTimeout
		if drain <= 0 {
			drain = code["defaultShutdownTimeout"] // what serve's shutdown uses then
		}
		// serve closes its listener when SIGTERM comes; the preStop sleep
		// keeps it accepting while endpoints are updated.
		preStop := preStopSleep(t, c)
		if preStop < 5*time.Second {
			t.Errorf("preStop: got a sleep of %s, want at least 5s: serve stops accepting at SIGTERM, before kube-proxy and load balancers have seen the pod go", preStop)
		}
		grace := time.Duration(corev1.DefaultTerminationGracePeriodSeconds) * time.Second
		if spec.TerminationGracePeriodSeconds != nil {
			grace = time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
		}
		if need := preStop + drain + stop; grace <= need {
			t.Errorf("terminationGracePeriodSeconds: got %s, want more than preStop %s + listen.shutdown_timeout %s + admin stop %s = %s", grace, preStop, drain, stop, need)
		}
	})

	t.Run("service", func(t *testing.T) { checkService(t, m, c, d.Spec.Template.Labels, listenPort, adminPort) })

	t.Run("pod disruption budget", func(t *testing.T) {
		for _, pdb := range m.pdbs {
			if !selects(t, "PodDisruptionBudget "+pdb.Name, pdb.Spec.Selector, d.Spec.Template.Labels) {
				t.Errorf("PodDisruptionBudget %s: selector %v does not select the pods %v", pdb.Name, pdb.Spec.Selector, d.Spec.Template.Labels)
			}
			replicas := int(*d.Spec.Replicas)
			switch s := pdb.Spec; {
			case s.MaxUnavailable != nil:
				n, err := intstr.GetScaledValueFromIntOrPercent(s.MaxUnavailable, replicas, true)
				if err != nil || n < 1 || replicas-n < 1 {
					t.Errorf("PodDisruptionBudget %s: maxUnavailable %s of %d replicas: want at least one evictable and one left", pdb.Name, s.MaxUnavailable, replicas)
				}
			case s.MinAvailable != nil:
				n, err := intstr.GetScaledValueFromIntOrPercent(s.MinAvailable, replicas, true)
				if err != nil || n < 1 || n >= replicas {
					t.Errorf("PodDisruptionBudget %s: minAvailable %s of %d replicas: want at least one left and one evictable", pdb.Name, s.MinAvailable, replicas)
				}
			default:
				t.Errorf("PodDisruptionBudget %s: neither maxUnavailable nor minAvailable", pdb.Name)
			}
		}
	})
}

// loadPodConfig loads the configuration at host with exactly the
// container's environment: every ${NAME} it references must be set by the
// container, from a literal, a Secret or a ConfigMap among the manifests.
func loadPodConfig(t *testing.T, m *manifests, c *corev1.Container, host string) *config.Config {
	t.Helper()
	data, err := os.ReadFile(host)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		switch vf := e.ValueFrom; {
		case vf == nil:
			env[e.Name] = e.Value
		case vf.SecretKeyRef != nil:
			s, ok := m.secrets[vf.SecretKeyRef.Name]
			v, hasKey := []byte(nil), false
			if ok {
				v, hasKey = secretValue(s, vf.SecretKeyRef.Key)
			}
			if !hasKey {
				t.Errorf("env %s: Secret %s key %s is not among the manifests", e.Name, vf.SecretKeyRef.Name, vf.SecretKeyRef.Key)
			}
			env[e.Name] = string(v)
		case vf.ConfigMapKeyRef != nil:
			cm, ok := m.configMaps[vf.ConfigMapKeyRef.Name]
			v, hasKey := "", false
			if ok {
				v, hasKey = cm.Data[vf.ConfigMapKeyRef.Key]
			}
			if !hasKey {
				t.Errorf("env %s: ConfigMap %s key %s is not among the manifests", e.Name, vf.ConfigMapKeyRef.Name, vf.ConfigMapKeyRef.Key)
			}
			env[e.Name] = v
		case vf.ResourceFieldRef != nil:
			q, ok := c.Resources.Limits[corev1.ResourceName(strings.TrimPrefix(vf.ResourceFieldRef.Resource, "limits."))]
			if !strings.HasPrefix(vf.ResourceFieldRef.Resource, "limits.") || !ok {
				t.Errorf("env %s: resourceFieldRef %s names no limit of the container", e.Name, vf.ResourceFieldRef.Resource)
			}
			env[e.Name] = strconv.FormatInt(q.Value(), 10)
		default:
			env[e.Name] = "from-the-pod"
		}
	}
	for _, ef := range c.EnvFrom {
		t.Errorf("envFrom %+v: name each variable under env, so that the test can check it", ef)
	}
	for _, ref := range regexp.MustCompile(`(^|[^$])\$\{(\w+)\}`).FindAllStringSubmatch(string(data), -1) {
		name := ref[2]
		if _, ok := env[name]; !ok {
			t.Errorf("the configuration references ${%s}, which container %s does not set", name, c.Name)
		}
		t.Setenv(name, "") // the machine running the test must not count
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	cfg, err := config.Load(host)
	if err != nil {
		t.Fatalf("config.Load: %v", err)
	}
	return cfg
}

// checkListenAddress checks that a listener address of the configuration
// listens on every interface of the pod on a port the container declares,
// and returns the port.
func checkListenAddress(t *testing.T, c *corev1.Container, key, addr string) int32 {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Errorf("%s %q: %v", key, addr, err)
		return -1
	}
	if host != "" && host != "0.0.0.0" && host != "::" {
		t.Errorf("%s: got host %q; want 0.0.0.0, or the Service and the kubelet cannot reach it", key, host)
	}
	n, _ := strconv.Atoi(port)
	if _, ok := containerPort(c, intstr.FromInt32(int32(n))); !ok {
		t.Errorf("%s: port %d is not a containerPort of %s (%v)", key, n, c.Name, c.Ports)
	}
	return int32(n)
}

// preStopSleep returns how long the container's preStop hook sleeps: a
// sleep action, or an exec of sleep N.
func preStopSleep(t *testing.T, c *corev1.Container) time.Duration {
	t.Helper()
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
		return 0
	}
	h := c.Lifecycle.PreStop
	switch {
	case h.Sleep != nil:
		return time.Duration(h.Sleep.Seconds) * time.Second
	case h.Exec != nil && len(h.Exec.Command) == 2 && filepath.Base(h.Exec.Command[0]) == "sleep":
		n, err := strconv.Atoi(h.Exec.Command[1])
		if err != nil {
			t.Errorf("preStop: sleep %q is not a whole number of seconds", h.Exec.Command[1])
		}
		return time.Duration(n) * time.Second
	}
	t.Errorf("preStop: got %+v, want sleep N", h)
	return 0
}

// checkService checks that a Service selects the pods and reaches both
// listeners, and that the ServiceMonitor scrapes /metrics through it.
func checkService(t *testing.T, m *manifests, c *corev1.Container, podLabels map[string]string, listenPort, adminPort int32) {
	var metricsPorts []string
	for _, svc := range m.services {
		if !selects(t, "Service "+svc.Name, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, podLabels) {
			t.Errorf("Service %s: selector %v does not select the pods %v", svc.Name, svc.Spec.Selector, podLabels)
		}
		reached := map[int32]bool{}
		for _, sp := range svc.Spec.Ports {
			target := sp.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(sp.Port) // targetPort defaults to port
			}
			cp, ok := containerPort(c, target)
			if !ok {
				t.Errorf("Service %s port %s: targetPort %s is no containerPort of %s", svc.Name, sp.Name, target.String(), c.Name)
				continue
			}
			if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
				t.Errorf("Service %s port %s: protocol %s, want TCP", svc.Name, sp.Name, sp.Protocol)
			}
			reached[cp.ContainerPort] = true
			if cp.ContainerPort == adminPort {
				metricsPorts = append(metricsPorts, svc.Name+"/"+sp.Name)
			}
		}
		if !reached[listenPort] || !reached[adminPort] {
			t.Errorf("Service %s: reaches container ports %v, want listen.address's %d and admin.address's %d", svc.Name, slices.Sorted(mapKeysInt(reached)), listenPort, adminPort)
		}
	}
	for _, sm := range m.serviceMonitors {
		scraped := false
		for _, svc := range m.services {
			if !selects(t, "ServiceMonitor "+sm.Name, &sm.Spec.Selector, svc.Labels) {
				continue
			}
			if ns := sm.Spec.NamespaceSelector; ns != nil && !ns.Any && len(ns.MatchNames) > 0 {
				t.Errorf("ServiceMonitor %s: namespaceSelector %v; leave it out so it follows the namespace the manifests are applied to", sm.Name, ns.MatchNames)
			}
			for _, ep := range sm.Spec.Endpoints {
				if ep.Path != "/metrics" {
					t.Errorf("ServiceMonitor %s: endpoint path %q, want /metrics", sm.Name, ep.Path)
				}
				if ep.Scheme != "" && ep.Scheme != "http" {
					t.Errorf("ServiceMonitor %s: scheme %q; the admin listener speaks plain HTTP", sm.Name, ep.Scheme)
				}
				if slices.Contains(metricsPorts, svc.Name+"/"+ep.Port) {
					scraped = true
				}
			}
		}
		if !scraped {
			t.Errorf("ServiceMonitor %s: selects no Service port that reaches admin.address's port %d by name (named ports: %v)", sm.Name, adminPort, metricsPorts)
		}
	}
	if len(metricsPorts) == 0 {
		t.Error("no Service port reaches the admin port")
	}
}

func mapKeysInt(m map[int32]bool) func(func(int32) bool) {
	return func(yield func(int32) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestPlaceholderTLS checks that the TLS Secret's committed contents are
// not a usable key pair: a certificate belongs to its cluster.
func TestPlaceholderTLS(t *testing.T) {
	m := loadManifests(t)
	for name, s := range m.secrets {
		crt, ok1 := secretValue(s, corev1.TLSCertKey)
		key, ok2 := secretValue(s, corev1.TLSPrivateKeyKey)
		if !ok1 || !ok2 {
			continue
		}
		if _, err := tls.X509KeyPair(crt, key); err == nil {
			t.Errorf("Secret %s holds a usable key pair; commit placeholders", name)
		}
	}
}
