// What the three ORM fixtures (sequelize.js, typeorm.js, knex.js) share:
// the patients acme creates in tenant mode, how a row is printed, and, in
// pool mode, the rows a pooled transaction writes and the poolTx it
// reports (see poolPatient, poolTx and checkPoolRun in
// proxy/tokenpool_test.go, which check what the fixtures print).
'use strict';

// The ssn acme creates and searches; globex has a row with it too (ormEnv
// in proxy/orm_test.go).
const ssn = process.env.PGCLOAK_SSN || '123-45-6789';

// The rows acme creates in tenant mode. dave is deleted again.
const patients = [
  { name: 'alice', ssn, email: 'Alice@Example.com', diagnosis: 'influenza', birth_date: '1980-01-02' },
  { name: 'carol', ssn: '555-00-1111', email: 'carol@example.com', diagnosis: 'asthma', birth_date: '1990-03-04' },
  { name: 'dave', ssn: '555-00-2222', email: 'dave@example.com', diagnosis: 'gout', birth_date: '1970-05-06' },
];

// day prints a date as YYYY-MM-DD: a Date by its local calendar day (how
// node-postgres parses a date), a string as it is; anything else shows
// its type so that a wrong one cannot pass.
function day(v) {
  if (v instanceof Date) {
    const p = (n) => String(n).padStart(2, '0');
    return `${v.getFullYear()}-${p(v.getMonth() + 1)}-${p(v.getDate())}`;
  }
  if (typeof v === 'string') return v;
  return `${typeof v}:${JSON.stringify(v)}`;
}

// row prints a patients row as name|ssn|email|diagnosis|birth_date.
function row(r) {
  return [r.name, r.ssn, r.email, r.diagnosis, day(r.birth_date)].join('|');
}

// rows prints rows, ordered by name, separated by ", ".
function rows(rs) {
  return [...rs].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map(row).join(', ');
}

// kind names the JavaScript type of a value: Date, string, number, ...
function kind(v) {
  if (v === null) return 'null';
  if (v instanceof Date) return 'Date';
  return typeof v;
}

// poolPatient is the row tenant writes under tag (poolPatient in
// proxy/tokenpool_test.go).
function poolPatient(tenant, tag) {
  const name = `${tenant}/${tag}`;
  return { name, ssn: `${tenant}-ssn-${tag}`, diagnosis: `diagnosis of ${name}`, tenant_id: tenant };
}

// otherSSN is the ssn of a seed row of another tenant (seedPool).
function otherSSN(tenant) {
  return poolPatient(tenant === 'tenant00' ? 'tenant01' : 'tenant00', 'seed.0').ssn;
}

// poolRow keeps the fields of a row that a poolTx reports.
function poolRow(r) {
  return { name: r.name, ssn: r.ssn, diagnosis: r.diagnosis, tenant_id: r.tenant_id };
}

// poolJobs turns PGCLOAK_TOKENS ({"tenant": ["jwt", ...]}) into
// [tenant, token, tag] jobs, round-robin over tenants, with a job without
// a token ('' tenant) after every third.
function poolJobs(prefix) {
  const tokens = JSON.parse(process.env.PGCLOAK_TOKENS);
  const jobs = [];
  const rounds = Math.max(...Object.values(tokens).map((t) => t.length));
  for (let r = 0; r < rounds; r++) {
    for (const [tenant, toks] of Object.entries(tokens)) {
      if (r >= toks.length) continue;
      jobs.push([tenant, toks[r], `${prefix}${r}.${jobs.length}`]);
      if (jobs.length % 3 === 0) jobs.push(['', '', `none${r}.${jobs.length}`]);
    }
  }
  return jobs;
}

// setLocalToken is the statement that presents tok for one transaction,
// the token quoted as a literal.
function setLocalToken(tok) {
  return `SET LOCAL pgcloak.tenant_token = '${tok.replace(/'/g, "''")}'`;
}

// Rollback is thrown to roll back a transaction without a token after it
// has tried to write.
class Rollback extends Error {}

// main runs fn and exits non-zero with the error's stack when it fails.
function main(fn) {
  fn().catch((e) => {
    console.error(e.stack || String(e));
    if (e.original) console.error('original:', e.original.code, e.original.message);
    if (e.sql) console.error('sql:', e.sql);
    process.exit(1);
  });
}

module.exports = { ssn, patients, day, row, rows, kind, poolPatient, otherSSN, poolRow, poolJobs, setLocalToken, Rollback, main };
