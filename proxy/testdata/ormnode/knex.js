// Knex on node-postgres as an application uses it against pgcloak.
//
// PGCLOAK_MODE=tenant (TestORMNodeKnex/tenant): the migrator (an unscoped
// role, PGCLOAK_MIGRATOR_URL) runs the migrations in migrations/; the
// application, logged in as tenant acme (PGCLOAK_URL), reflects patients
// with columnInfo, inserts, reads back, searches the encrypted columns
// with = and IN, joins a table of the migration, streams with .stream()
// (pg-query-stream: a portal read in batches), updates and deletes.
// Prints one line per step for the test to compare.
//
// PGCLOAK_MODE=pool (TestORMNodeKnex/pool): one Knex pool
// (PGCLOAK_POOL_MAX connections) as the token role, a knex.transaction per
// token of PGCLOAK_TOKENS presenting it with SET LOCAL, all started at
// once; prints what each transaction wrote and read as JSON (poolTx).
'use strict';
const path = require('path');
const Knex = require('knex');
const { ssn, patients, day, row, rows, kind, poolPatient, otherSSN, poolRow, poolJobs, setLocalToken, Rollback, main } = require('./common');

const columns = ['name', 'ssn', 'email', 'diagnosis', 'birth_date'];

async function tenant() {
  const migrator = Knex({
    client: 'pg',
    connection: process.env.PGCLOAK_MIGRATOR_URL,
    pool: { min: 0, max: 1 },
    migrations: { directory: path.join(__dirname, 'migrations') },
  });
  const [batch, done] = await migrator.migrate.latest();
  console.log(`migrated batch ${batch} ${done.map((f) => path.basename(f)).join(',')}`);
  await migrator.destroy();

  const knex = Knex({ client: 'pg', connection: process.env.PGCLOAK_URL, pool: { min: 0, max: 2 } });
  const info = await knex('patients').columnInfo();
  console.log('columns ' + Object.keys(info).sort().map((c) => `${c}:${info[c].type}`).join(' '));
  console.log(`ssn column ${JSON.stringify(await knex('patients').columnInfo('ssn'))}`);

  const created = [];
  for (const p of patients) {
    const [r] = await knex('patients').insert(p).returning(['id', 'tenant_id', ...columns]);
    created.push(r);
  }
  console.log(`inserted ${created.map((r) => `${r.name}:${kind(r.id)}:${r.tenant_id}:${kind(r.birth_date)}`).join(',')}`);

  const bySSN = await knex('patients').select(columns).where('ssn', ssn);
  console.log(`where ssn ${rows(bySSN)} ${kind(bySSN[0].ssn)} ${kind(bySSN[0].birth_date)}`);
  const byEmail = await knex('patients').select('name').where({ email: 'ALICE@EXAMPLE.COM' });
  console.log(`where email ${byEmail.map((r) => r.name).join(',')}`);
  const byIn = await knex('patients').select('name').whereIn('ssn', [ssn, '555-00-1111']).orderBy('name');
  console.log(`where in ${byIn.map((r) => r.name).join(',')}`);
  const count = await knex('patients').count({ n: '*' }).where('email', 'carol@example.com').orWhere('ssn', '555-00-2222');
  console.log(`count ${count[0].n}`);
  const first = await knex('patients').first(columns).where('ssn', '555-00-1111');
  console.log(`first ${row(first)}`);

  // A table of the migration, joined to the encrypted table.
  await knex('visits').insert({ patient_id: created[0].id, note: 'checkup' });
  const joined = await knex('patients')
    .join('visits', 'visits.patient_id', 'patients.id')
    .select('patients.name', 'patients.ssn', 'visits.note')
    .where('patients.ssn', ssn);
  console.log(`join ${joined.map((r) => `${r.name}|${r.ssn}|${r.note}`).join(',')}`);

  // .stream(): pg-query-stream reads the result through a portal, a batch
  // of rows at a time.
  const streamed = [];
  for await (const r of knex('patients').select(columns).whereIn('ssn', [ssn, '555-00-1111']).orderBy('name').stream({ batchSize: 1 })) {
    streamed.push(r);
  }
  console.log(`stream ${rows(streamed)}`);

  const updated = await knex('patients').where('ssn', ssn).update({ diagnosis: 'flu', birth_date: '1981-02-03' }, columns);
  console.log(`updated ${updated.length} ${rows(updated)}`);
  const deleted = await knex('patients').where('ssn', '555-00-2222').del();
  console.log(`deleted ${deleted}`);
  const all = await knex('patients').select(columns).orderBy('name');
  console.log(`all ${rows(all)}`);
  const raw = await knex.raw('select ssn, birth_date from patients where ssn = ?', [ssn]);
  console.log(`raw ${raw.fields.map((f) => `${f.name}:${f.dataTypeID}`).join(',')} ${raw.rows[0].ssn} ${kind(raw.rows[0].birth_date)} ${day(raw.rows[0].birth_date)}`);
  await knex.destroy();
}

// transaction is one pooled transaction of tenant (none when tenant is
// ''), presenting tok.
async function transaction(knex, tenant, tok, tag) {
  const res = { tenant, pid: 0, wrote: [], read: [], found: [], other: 0, refused: '' };
  const select = ['name', 'ssn', 'diagnosis', 'tenant_id'];
  try {
    await knex.transaction(async (trx) => {
      res.pid = (await trx.raw('select pg_backend_pid() as pid')).rows[0].pid;
      if (!tenant) {
        res.read = (await trx('patients').select(select)).map(poolRow);
        const w = poolPatient('nobody', tag);
        try {
          await trx('patients').insert({ name: w.name, ssn: w.ssn, diagnosis: w.diagnosis });
        } catch (e) {
          res.refused = e.code || String(e);
        }
        throw new Rollback();
      }
      await trx.raw(setLocalToken(tok));
      for (const i of [0, 1]) {
        const w = poolPatient(tenant, `${tag}.${i}`);
        await trx('patients').insert({ name: w.name, ssn: w.ssn, diagnosis: w.diagnosis });
        res.wrote.push(w);
      }
      res.read = (await trx('patients').select(select)).map(poolRow);
      res.found = (await trx('patients').select(select).where('ssn', res.wrote[0].ssn)).map(poolRow);
      res.other = Number((await trx('patients').count({ n: '*' }).where('ssn', otherSSN(tenant)))[0].n);
    });
  } catch (e) {
    if (!(e instanceof Rollback)) throw new Error(`transaction ${tag} of ${tenant || 'no tenant'}: ${e.code || ''} ${e.message}`);
  }
  return res;
}

async function pool() {
  const knex = Knex({ client: 'pg', connection: process.env.PGCLOAK_URL, pool: { min: 0, max: Number(process.env.PGCLOAK_POOL_MAX || 2) } });
  const results = await Promise.all(poolJobs('knex').map(([tenant, tok, tag]) => transaction(knex, tenant, tok, tag)));
  await knex.destroy();
  console.log(JSON.stringify(results));
}

main(process.env.PGCLOAK_MODE === 'pool' ? pool : tenant);
