// SPDX-License-Identifier: Apache-2.0

// Package pgcloak is the root of the pgcloak module, a PostgreSQL
// wire-protocol proxy that encrypts declared columns per tenant. It holds no
// code of its own: the binary is cmd/pgcloak, and the layers it is built
// from are packages of their own, each with a doc comment that says what it
// is for and what it refuses to know:
//
//   - config turns the YAML file into a validated, immutable Config;
//     docs/configuration.md lists every key it reads.
//   - proxy owns the sockets and the per-session message loop.
//   - rewrite decides, for one SQL text, whether to forward, rewrite or
//     refuse it.
//   - crypto knows the envelope format, the blind index and the keys;
//     keystore keeps the wrapped data keys in the upstream database.
//   - testenv starts real PostgreSQL servers for tests and the demo.
//
// The tests in this directory are the checks that span the module: every
// package has a doc comment (TestPackageDocs), and every module linked into
// a binary has a licence that may be distributed with an Apache-2.0
// project, as listed in docs/licenses.md (TestDependencyLicenses). pgcloak
// itself is licensed under the Apache License 2.0; see LICENSE.
package pgcloak
