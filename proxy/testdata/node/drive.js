// node-postgres as applications use it, against pgcloak: parameterised
// queries (unnamed and named prepared statements), a transaction, an
// array parameter, a refused statement. Prints what it saw as JSON for
// TestNodePostgres to check.
'use strict';
const { Client } = require('pg');

async function main() {
  const c = new Client({ connectionString: process.env.PGCLOAK_URL });
  await c.connect();
  const out = {};

  await c.query('BEGIN');
  const ins = await c.query(
    'insert into patients (name, ssn, email, birth_date, diagnosis) values ($1, $2, $3, $4, $5) returning ssn, birth_date',
    ['nina', '555-12-3456', 'Nina@Example.org', '1990-05-06', null]);
  await c.query('COMMIT');
  out.returned = { ssn: ins.rows[0].ssn, birth: ins.rows[0].birth_date.toISOString() };

  const r = await c.query('select name, ssn, email, birth_date, diagnosis from patients where ssn = $1', ['555-12-3456']);
  out.row = r.rows[0];
  out.birthIsDate = r.rows[0].birth_date instanceof Date;
  out.row.birth_date = r.rows[0].birth_date.toISOString();
  out.fields = r.fields.map((f) => [f.name, f.dataTypeID]);

  // A named statement, executed three times: the first execution's
  // Describe teaches pgcloak the row shape, later ones fetch the encrypted
  // columns in binary upstream.
  const q = { name: 'by-email', text: 'select name, ssn, birth_date from patients where email = $1' };
  out.byEmail = [];
  for (const email of ['nina@example.ORG', 'NINA@EXAMPLE.ORG', 'Nina@Example.org']) {
    const res = await c.query({ ...q, values: [email] });
    out.byEmail.push(res.rows.map((r) => r.ssn + ' ' + r.birth_date.toISOString()).join());
  }

  const any = await c.query('select count(*)::int as n from patients where ssn = any($1)', [['555-12-3456', 'nobody']]);
  out.any = any.rows[0].n;

  await c.query('BEGIN');
  await c.query('update patients set diagnosis = $1 where ssn = $2', ['flu', '555-12-3456']);
  await c.query('ROLLBACK');
  const d = await c.query('select diagnosis from patients where ssn = $1', ['555-12-3456']);
  out.afterRollback = d.rows[0].diagnosis;

  try {
    await c.query('select name from patients where ssn < $1', ['x']);
    out.refused = 'not refused';
  } catch (e) {
    out.refused = e.code;
  }
  const still = await c.query('select 1 as one');
  out.usable = still.rows[0].one;

  console.log(JSON.stringify(out));
  await c.end();
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
