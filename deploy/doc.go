// Package deploy holds no code: it is where pgcloak's deployment files live
// and where their tests run.
//
//   - kubernetes/ is a plain-YAML topology (kustomization.yaml lists it): a
//     Deployment of stateless replicas, a Service, a PodDisruptionBudget, the
//     configuration file in a ConfigMap, placeholder Secrets and a
//     ServiceMonitor.
//   - grafana/ is a dashboard over the metrics package's series.
//
// The tests read those files the way the API server and Grafana would and
// check that they agree with the code rather than with each other's copy of
// it: manifests decode strictly into the k8s.io/api types (a misspelt field
// fails, as kubectl's server-side field validation would), the ConfigMap's
// file loads with package config against a pod filesystem the test builds
// from the volumes, ports and probes match the configured addresses and the
// admin endpoints, the pod's user is the Dockerfile's, the drain fits in the
// grace period that cmd/pgcloak's shutdown needs, and every series the
// dashboard queries is one the metrics package registers, used as its type
// allows. Nothing here starts a cluster or a container.
package deploy
