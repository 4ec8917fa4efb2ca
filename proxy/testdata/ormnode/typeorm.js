// TypeORM on node-postgres as an application uses it against pgcloak, with
// a plain entity for patients (ssn is a text column), written as an
// EntitySchema so that plain JavaScript needs no decorators.
//
// PGCLOAK_MODE=tenant (TestORMNodeTypeORM/tenant), logged in as tenant
// acme (PGCLOAK_URL): QueryRunner.getTable reads the catalog, and the
// schema builder's log() (synchronize as a dry run) compares the entity
// with it (and, as a control, with what the unscoped migrator,
// PGCLOAK_MIGRATOR_URL, reads); the repository saves, finds with = and In on the encrypted
// columns, counts, queries with a QueryBuilder, streams with
// QueryBuilder.stream() (pg-query-stream: a portal read in batches),
// updates, saves a loaded entity and deletes. Prints one line per step.
//
// PGCLOAK_MODE=pool (TestORMNodeTypeORM/pool): one DataSource (a pool of
// PGCLOAK_POOL_MAX connections) as the token role, a
// dataSource.transaction per token of PGCLOAK_TOKENS presenting it with
// SET LOCAL, all started at once; prints each as JSON (poolTx).
'use strict';
const { DataSource, EntitySchema, In } = require('typeorm');
const { ssn, patients, day, rows, kind, poolPatient, otherSSN, poolRow, poolJobs, setLocalToken, Rollback, main } = require('./common');

// Patient is the table as the application declares it: its own index and
// CHECK, nothing of pgcloak's.
const Patient = new EntitySchema({
  name: 'Patient',
  tableName: 'patients',
  columns: {
    id: { type: 'int', primary: true, generated: 'increment' },
    tenant_id: { type: 'text', default: () => 'pgcloak.current_tenant()' },
    name: { type: 'text', nullable: true },
    ssn: { type: 'text', nullable: true },
    email: { type: 'text', nullable: true },
    diagnosis: { type: 'text', nullable: true },
    birth_date: { type: 'date', nullable: true },
  },
  indices: [{ name: 'patients_name_idx', columns: ['name'] }],
  checks: [{ name: 'patients_name_check', expression: `name <> ''` }],
});

async function open(max, url = process.env.PGCLOAK_URL) {
  const ds = new DataSource({
    type: 'postgres',
    url,
    entities: [Patient],
    synchronize: false,
    logging: !!process.env.PGCLOAK_LOG,
    poolSize: max,
  });
  return ds.initialize();
}

const select = { name: true, ssn: true, email: true, diagnosis: true, birth_date: true };

async function tenant() {
  const ds = await open(2);
  const qr = ds.createQueryRunner();
  const table = await qr.getTable('patients');
  await qr.release();
  console.log('columns ' + table.columns.map((c) => `${c.name}:${c.type}${c.isNullable ? '' : ':not null'}${c.isPrimary ? ':pk' : ''}${c.isGenerated ? ':' + c.generationStrategy : ''}`).join(' '));
  console.log('indices ' + table.indices.map((i) => `${i.name}:${i.columnNames.join('+')}`).sort().join(' '));
  console.log('checks ' + table.checks.map((c) => `${c.name}:${c.expression}`).sort().join(' '));
  console.log('foreign keys ' + table.foreignKeys.length + ' uniques ' + table.uniques.length);
  const log = await ds.driver.createSchemaBuilder().log();
  console.log(`synchronize would run ${log.upQueries.length} queries${log.upQueries.map((q) => '; ' + q.query).join('')}`);
  // The control: the migrator (unscoped) reads the stored catalog, where
  // the declared columns are bytea beside their index columns, and the
  // same dry run would change them.
  const mds = await open(1, process.env.PGCLOAK_MIGRATOR_URL);
  const mlog = await mds.driver.createSchemaBuilder().log();
  await mds.destroy();
  const touches = (col) => mlog.upQueries.some((q) => q.query.includes(`"${col}"`));
  console.log(`as the migrator synchronize would touch ${['ssn', 'ssn_bidx', 'email_bidx', 'birth_date'].filter(touches).join(',')}`);

  const repo = ds.getRepository(Patient);
  const created = [];
  for (const p of patients) created.push(await repo.save(repo.create(p)));
  console.log(`saved ${created.map((p) => `${p.name}:${kind(p.id)}:${p.tenant_id}`).join(',')}`);

  const bySSN = await repo.find({ select, where: { ssn } });
  console.log(`find ssn ${rows(bySSN)} ${kind(bySSN[0].ssn)} ${kind(bySSN[0].birth_date)}`);
  const byEmail = await repo.findBy({ email: 'ALICE@EXAMPLE.COM' });
  console.log(`find email ${byEmail.map((p) => p.name).join(',')}`);
  const byIn = await repo.find({ where: { ssn: In([ssn, '555-00-1111']) }, order: { name: 'ASC' } });
  console.log(`find in ${byIn.map((p) => p.name).join(',')}`);
  const count = await repo.count({ where: [{ email: 'carol@example.com' }, { ssn: '555-00-2222' }] });
  console.log(`count ${count} ${kind(count)}`);
  const carol = await repo.findOneBy({ ssn: '555-00-1111' });
  console.log(`findOneBy ${rows([carol])}`);
  const qb = await repo.createQueryBuilder('p').select(['p.name'])
    .where('p.ssn = :ssn', { ssn }).orWhere('p.email IN (:...emails)', { emails: ['dave@example.com', 'nobody@example.com'] })
    .orderBy('p.name').getMany();
  console.log(`query builder ${qb.map((p) => p.name).join(',')}`);
  const raw = await repo.createQueryBuilder('p').select('p.birth_date', 'birth_date').addSelect('p.ssn', 'ssn').where('p.ssn = :ssn', { ssn }).getRawOne();
  console.log(`raw ${raw.ssn} ${kind(raw.birth_date)} ${day(raw.birth_date)}`);

  // QueryBuilder.stream(): raw rows through pg-query-stream's portal.
  const stream = await repo.createQueryBuilder('p').select(['p.name', 'p.ssn', 'p.email', 'p.diagnosis', 'p.birth_date'])
    .where('p.ssn IN (:...ssns)', { ssns: [ssn, '555-00-1111'] }).orderBy('p.name').stream();
  const streamed = [];
  for await (const r of stream) {
    streamed.push({ name: r.p_name, ssn: r.p_ssn, email: r.p_email, diagnosis: r.p_diagnosis, birth_date: r.p_birth_date });
  }
  console.log(`stream ${rows(streamed)} ${kind(streamed[0].birth_date)}`);

  const updated = await repo.update({ ssn }, { diagnosis: 'flu', birth_date: '1981-02-03' });
  console.log(`updated ${updated.affected}`);
  carol.diagnosis = 'mild asthma';
  carol.birth_date = '1990-03-05';
  await repo.save(carol);
  console.log(`saved ${rows([await repo.findOneBy({ id: carol.id })])}`);
  const deleted = await repo.delete({ ssn: '555-00-2222' });
  console.log(`deleted ${deleted.affected}`);
  const all = await repo.find({ select, order: { name: 'ASC' } });
  console.log(`all ${rows(all)}`);
  const q = await ds.query('select ssn, birth_date from patients where ssn = $1', [ssn]);
  console.log(`query ${q[0].ssn} ${kind(q[0].birth_date)} ${day(q[0].birth_date)}`);
  await ds.destroy();
}

// transaction is one pooled transaction of tenant (none when tenant is
// ''), presenting tok.
async function transaction(ds, tenant, tok, tag) {
  const res = { tenant, pid: 0, wrote: [], read: [], found: [], other: 0, refused: '' };
  try {
    await ds.transaction(async (m) => {
      res.pid = m.queryRunner.databaseConnection.processID;
      if (!tenant) {
        res.read = (await m.find(Patient)).map(poolRow);
        const w = poolPatient('nobody', tag);
        try {
          await m.insert(Patient, { name: w.name, ssn: w.ssn, diagnosis: w.diagnosis });
        } catch (e) {
          res.refused = (e.driverError && e.driverError.code) || String(e);
        }
        throw new Rollback();
      }
      await m.query(setLocalToken(tok));
      for (const i of [0, 1]) {
        const w = poolPatient(tenant, `${tag}.${i}`);
        const p = await m.save(Patient, { name: w.name, ssn: w.ssn, diagnosis: w.diagnosis });
        if (p.tenant_id !== tenant) throw new Error(`saved as ${tenant}, stamped ${p.tenant_id}`);
        res.wrote.push(w);
      }
      res.read = (await m.find(Patient)).map(poolRow);
      res.found = (await m.findBy(Patient, { ssn: res.wrote[0].ssn })).map(poolRow);
      res.other = await m.countBy(Patient, { ssn: otherSSN(tenant) });
    });
  } catch (e) {
    if (!(e instanceof Rollback)) throw new Error(`transaction ${tag} of ${tenant || 'no tenant'}: ${(e.driverError && e.driverError.code) || ''} ${e.message}`);
  }
  return res;
}

async function pool() {
  const ds = await open(Number(process.env.PGCLOAK_POOL_MAX || 2));
  const results = await Promise.all(poolJobs('typeorm').map(([tenant, tok, tag]) => transaction(ds, tenant, tok, tag)));
  await ds.destroy();
  console.log(JSON.stringify(results));
}

main(process.env.PGCLOAK_MODE === 'pool' ? pool : tenant);
