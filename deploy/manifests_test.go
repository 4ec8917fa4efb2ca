package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Where the files under test live, seen from this package's directory.
const (
	repoRoot      = ".."
	manifestDir   = "kubernetes"
	kustomization = "kustomization.yaml"
	// secretsFile holds placeholder Secrets; kustomization.yaml must not
	// list it, or every apply would overwrite the real values.
	secretsFile = "secrets.yaml"
)

// serviceMonitor is the part of a monitoring.coreos.com/v1 ServiceMonitor
// that these manifests use. Decoded strictly, so a field outside it fails
// the test rather than being ignored; add fields here when the manifest
// needs them.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector *struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		Endpoints []struct {
			Port          string `json:"port,omitempty"`
			TargetPort    any    `json:"targetPort,omitempty"`
			Path          string `json:"path,omitempty"`
			Scheme        string `json:"scheme,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// kustomizationFile is the part of a kustomize Kustomization these
// manifests use, decoded strictly.
type kustomizationFile struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace,omitempty"`
	Resources  []string `json:"resources"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors,omitempty"`
		IncludeTemplates bool              `json:"includeTemplates,omitempty"`
	} `json:"labels,omitempty"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images,omitempty"`
}

// manifests is every object under kubernetes/, by kind.
type manifests struct {
	files           []string // base names of the manifest files, sorted
	deployments     []*appsv1.Deployment
	services        []*corev1.Service
	configMaps      map[string]*corev1.ConfigMap
	secrets         map[string]*corev1.Secret
	serviceAccounts map[string]*corev1.ServiceAccount
	pdbs            []*policyv1.PodDisruptionBudget
	serviceMonitors []*serviceMonitor
}

// loadManifests decodes every document of every YAML file under
// kubernetes/ (but kustomization.yaml) strictly into its API type. A kind
// the test does not know is an error, so that nothing goes unchecked.
func loadManifests(t *testing.T) *manifests {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(manifestDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := &manifests{
		configMaps:      map[string]*corev1.ConfigMap{},
		secrets:         map[string]*corev1.Secret{},
		serviceAccounts: map[string]*corev1.ServiceAccount{},
	}
	for _, path := range paths {
		name := filepath.Base(path)
		if name == kustomization {
			continue
		}
		m.files = append(m.files, name)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		docs := yamlDocuments(data)
		if len(docs) == 0 {
			t.Errorf("%s: no object", path)
		}
		for i, doc := range docs {
			where := fmt.Sprintf("%s (document %d)", path, i+1)
			if err := m.add(doc); err != nil {
				t.Errorf("%s: %v", where, err)
			}
		}
	}
	slices.Sort(m.files)
	if len(m.deployments) != 1 {
		t.Fatalf("got %d Deployments, want 1", len(m.deployments))
	}
	return m
}

// add decodes one document by its apiVersion and kind.
func (m *manifests) add(doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	strict := func(v any) error { return decodeStrict(doc, v) }
	named := func(meta metav1.ObjectMeta) error {
		if meta.Name == "" {
			return fmt.Errorf("%s has no metadata.name", tm.Kind)
		}
		return nil
	}
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 Deployment":
		var o appsv1.Deployment
		if err := strict(&o); err != nil {
			return err
		}
		m.deployments = append(m.deployments, &o)
		return named(o.ObjectMeta)
	case "v1 Service":
		var o corev1.Service
		if err := strict(&o); err != nil {
			return err
		}
		m.services = append(m.services, &o)
		return named(o.ObjectMeta)
	case "v1 ConfigMap":
		var o corev1.ConfigMap
		if err := strict(&o); err != nil {
			return err
		}
		m.configMaps[o.Name] = &o
		return named(o.ObjectMeta)
	case "v1 Secret":
		var o corev1.Secret
		if err := strict(&o); err != nil {
			return err
		}
		m.secrets[o.Name] = &o
		return named(o.ObjectMeta)
	case "v1 ServiceAccount":
		var o corev1.ServiceAccount
		if err := strict(&o); err != nil {
			return err
		}
		m.serviceAccounts[o.Name] = &o
		return named(o.ObjectMeta)
	case "policy/v1 PodDisruptionBudget":
		var o policyv1.PodDisruptionBudget
		if err := strict(&o); err != nil {
			return err
		}
		m.pdbs = append(m.pdbs, &o)
		return named(o.ObjectMeta)
	case "monitoring.coreos.com/v1 ServiceMonitor":
		var o serviceMonitor
		if err := strict(&o); err != nil {
			return err
		}
		m.serviceMonitors = append(m.serviceMonitors, &o)
		return named(o.ObjectMeta)
	}
	return fmt.Errorf("apiVersion %q kind %q: not a kind this test decodes; teach loadManifests about it", tm.APIVersion, tm.Kind)
}

// decodeStrict decodes one YAML document into v as the API server's
// strict field validation would: duplicate keys and unknown fields fail,
// and field names match case-sensitively. sigs.k8s.io/yaml's
// UnmarshalStrict alone decodes with encoding/json, which would take
// readOnlyRootFileSystem for readOnlyRootFilesystem.
func decodeStrict(doc []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strictErrs, err := kjson.UnmarshalStrict(j, v, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

// yamlDocuments splits a YAML stream at its "---" lines and drops documents
// that hold only comments and blank lines.
func yamlDocuments(data []byte) [][]byte {
	var docs [][]byte
	for _, doc := range regexp.MustCompile(`(?m)^---[ \t]*$`).Split(string(data), -1) {
		for _, line := range strings.Split(doc, "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				docs = append(docs, []byte(doc))
				break
			}
		}
	}
	return docs
}

// secretValue returns key of a Secret as the API server would store it:
// stringData wins over data.
func secretValue(s *corev1.Secret, key string) ([]byte, bool) {
	if v, ok := s.StringData[key]; ok {
		return []byte(v), true
	}
	v, ok := s.Data[key]
	return v, ok
}

// secretKeys returns every key of a Secret, sorted.
func secretKeys(s *corev1.Secret) []string {
	var keys []string
	for k := range s.Data {
		keys = append(keys, k)
	}
	for k := range s.StringData {
		if _, dup := s.Data[k]; !dup {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// selects reports whether sel, which must not be empty, selects objects
// labelled with set.
func selects(t *testing.T, what string, sel *metav1.LabelSelector, set map[string]string) bool {
	t.Helper()
	if sel == nil || (len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0) {
		t.Errorf("%s: empty selector; it would select everything (or nothing)", what)
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return false
	}
	return s.Matches(labels.Set(set))
}

// dockerfile is what the test reads from the runtime stage of the
// repository's Dockerfile.
type dockerfile struct {
	base       string // the runtime stage's FROM image
	uid, gid   int64
	entrypoint []string
}

// readDockerfile parses the last stage's USER (numeric uid[:gid]) and its
// exec-form ENTRYPOINT.
func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := regexp.MustCompile(`\\\n\s*`).ReplaceAllString(string(data), " ")
	var last []string
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(strings.ToUpper(line), "FROM "):
			last = []string{line}
		default:
			last = append(last, line)
		}
	}
	var d dockerfile
	d.uid, d.gid = -1, -1
	if f := strings.Fields(last[0]); len(f) >= 2 {
		d.base = f[1]
	}
	for _, line := range last {
		instr, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "USER":
			user, group, hasGroup := strings.Cut(rest, ":")
			if d.uid, err = strconv.ParseInt(user, 10, 64); err != nil {
				t.Fatalf("Dockerfile: USER %q is not numeric; runAsNonRoot needs a numeric UID to check", rest)
			}
			d.gid = d.uid
			if hasGroup {
				if d.gid, err = strconv.ParseInt(group, 10, 64); err != nil {
					t.Fatalf("Dockerfile: USER %q: group is not numeric", rest)
				}
			}
		case "ENTRYPOINT":
			if err := yaml.Unmarshal([]byte(rest), &d.entrypoint); err != nil || len(d.entrypoint) == 0 {
				t.Fatalf("Dockerfile: ENTRYPOINT %s is not an exec-form JSON array", rest)
			}
		}
	}
	if d.uid < 0 || d.entrypoint == nil {
		t.Fatalf("Dockerfile: the runtime stage has no USER or no ENTRYPOINT")
	}
	return d
}

// TestManifestsDecode checks that every manifest decodes strictly and that
// kustomization.yaml lists every manifest but the placeholder Secrets.
func TestManifestsDecode(t *testing.T) {
	m := loadManifests(t)
	data, err := os.ReadFile(filepath.Join(manifestDir, kustomization))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomizationFile
	if err := decodeStrict(data, &k); err != nil {
		t.Fatalf("%s: %v", kustomization, err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("%s: got %s %s, want kustomize.config.k8s.io/v1beta1 Kustomization", kustomization, k.APIVersion, k.Kind)
	}
	var want []string
	for _, f := range m.files {
		if f != secretsFile {
			want = append(want, f)
		}
	}
	got := slices.Sorted(slices.Values(k.Resources))
	if !slices.Equal(got, want) {
		t.Errorf("%s resources: got %v, want %v (every manifest but %s)", kustomization, got, want, secretsFile)
	}
	if !slices.Contains(m.files, secretsFile) || len(m.secrets) == 0 {
		t.Errorf("want the placeholder Secrets in %s", secretsFile)
	}
	for _, l := range k.Labels {
		if l.IncludeSelectors {
			t.Errorf("%s: labels with includeSelectors change the Deployment's selector, which is immutable", kustomization)
		}
	}
	d := m.deployments[0]
	for _, img := range k.Images {
		found := false
		for _, c := range slices.Concat(d.Spec.Template.Spec.InitContainers, d.Spec.Template.Spec.Containers) {
			name, _, _ := strings.Cut(c.Image, ":")
			found = found || name == img.Name
		}
		if !found {
			t.Errorf("%s: images entry %q names no container image", kustomization, img.Name)
		}
	}
	for _, path := range []string{"deployment.yaml", "service.yaml", "pdb.yaml", "configmap.yaml", "servicemonitor.yaml"} {
		if !slices.Contains(m.files, path) {
			t.Errorf("no %s", path)
		}
	}
	if len(m.services) == 0 || len(m.pdbs) == 0 || len(m.serviceMonitors) == 0 || len(m.configMaps) == 0 {
		t.Errorf("got %d Services, %d PodDisruptionBudgets, %d ServiceMonitors, %d ConfigMaps; want at least one of each",
			len(m.services), len(m.pdbs), len(m.serviceMonitors), len(m.configMaps))
	}
}

// TestStrictDecodingFails makes sure the decoding above can fail: a
// misspelt field must not be dropped silently.
func TestStrictDecodingFails(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(manifestDir, "deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Replace(data, []byte("readOnlyRootFilesystem:"), []byte("readOnlyRootFileSystem:"), 1)
	if bytes.Equal(bad, data) {
		t.Fatal("deployment.yaml: no readOnlyRootFilesystem to misspell")
	}
	var m manifests
	if err := m.add(bad); err == nil || !strings.Contains(err.Error(), "readOnlyRootFileSystem") {
		t.Errorf("a misspelt field: got error %v, want one naming readOnlyRootFileSystem", err)
	}
}
