// Sequelize on node-postgres as an application uses it against pgcloak,
// with a plain model of patients (ssn is a TEXT attribute).
//
// PGCLOAK_MODE=tenant (TestORMNodeSequelize/tenant), logged in as tenant
// acme (PGCLOAK_URL): sync() (whether the table exists, then its
// indexes), describeTable and showIndex read the catalog; create,
// findAll/findOne/count with = and Op.in on the encrypted columns, update
// (static, returning) and save, destroy. Sequelize has no streaming of
// its own, so a pg-cursor runs on a connection of Sequelize's pool (a
// portal read a row at a time). Prints one line per step.
//
// PGCLOAK_MODE=pool (TestORMNodeSequelize/pool): one Sequelize (a pool of
// PGCLOAK_POOL_MAX connections) as the token role, a managed
// sequelize.transaction per token of PGCLOAK_TOKENS presenting it with
// SET LOCAL, all started at once; prints each as JSON (poolTx).
'use strict';
const { Sequelize, DataTypes, Op, QueryTypes } = require('sequelize');
const Cursor = require('pg-cursor');
const { ssn, patients, day, rows, kind, poolPatient, otherSSN, poolRow, poolJobs, setLocalToken, Rollback, main } = require('./common');

function open(max) {
  const sequelize = new Sequelize(process.env.PGCLOAK_URL, {
    dialect: 'postgres',
    logging: process.env.PGCLOAK_LOG ? console.error : false,
    pool: { min: 0, max },
  });
  const Patient = sequelize.define('Patient', {
    id: { type: DataTypes.INTEGER, primaryKey: true, autoIncrement: true },
    tenant_id: DataTypes.TEXT, // the table's default stamps it
    name: DataTypes.TEXT,
    ssn: DataTypes.TEXT,
    email: DataTypes.TEXT,
    diagnosis: DataTypes.TEXT,
    birth_date: DataTypes.DATEONLY,
  }, { tableName: 'patients', timestamps: false });
  return { sequelize, Patient };
}

const attributes = ['name', 'ssn', 'email', 'diagnosis', 'birth_date'];

async function tenant() {
  const { sequelize, Patient } = open(2);
  const qi = sequelize.getQueryInterface();
  await sequelize.sync();
  console.log('synced');
  const desc = await qi.describeTable('patients');
  console.log('describe ' + Object.entries(desc).map(([c, d]) => `${c}:${d.type}:${d.allowNull ? 'null' : 'not null'}${d.primaryKey ? ':pk' : ''}`).join(' '));
  const indexes = await qi.showIndex('patients');
  console.log('indexes ' + indexes.map((i) => `${i.name}:${i.fields.map((f) => f.attribute).join('+')}`).sort().join(' '));

  const created = [];
  for (const p of patients) created.push(await Patient.create(p));
  console.log(`created ${created.map((p) => `${p.name}:${kind(p.id)}:${p.tenant_id}:${kind(p.birth_date)}`).join(',')}`);

  const bySSN = await Patient.findAll({ attributes, where: { ssn } });
  console.log(`where ssn ${rows(bySSN)} ${kind(bySSN[0].ssn)} ${kind(bySSN[0].birth_date)}`);
  const byEmail = await Patient.findAll({ attributes: ['name'], where: { email: 'ALICE@EXAMPLE.COM' } });
  console.log(`where email ${byEmail.map((p) => p.name).join(',')}`);
  const byIn = await Patient.findAll({ attributes: ['name'], where: { ssn: { [Op.in]: [ssn, '555-00-1111'] } }, order: [['name', 'ASC']] });
  console.log(`where in ${byIn.map((p) => p.name).join(',')}`);
  const count = await Patient.count({ where: { [Op.or]: [{ email: 'carol@example.com' }, { ssn: '555-00-2222' }] } });
  console.log(`count ${count} ${kind(count)}`);
  const carol = await Patient.findOne({ where: { ssn: '555-00-1111' } });
  console.log(`findOne ${rows([carol])}`);
  // Bound values (the extended protocol) in a raw query.
  const bound = await sequelize.query('select name from patients where ssn = $1 or email = $2 order by name',
    { bind: [ssn, 'dave@example.com'], type: QueryTypes.SELECT });
  console.log(`bind ${bound.map((r) => r.name).join(',')}`);

  // A server-side cursor: pg-cursor on a connection of Sequelize's pool.
  const conn = await sequelize.connectionManager.getConnection();
  try {
    const cursor = conn.query(new Cursor('select name, ssn, email, diagnosis, birth_date from patients where ssn in ($1, $2) order by name', [ssn, '555-00-1111']));
    const streamed = [];
    let fields;
    for (;;) {
      const batch = await cursor.read(1);
      if (batch.length === 0) break;
      streamed.push(...batch);
      fields = fields || cursor._result.fields;
    }
    await cursor.close();
    console.log(`cursor ${rows(streamed)} ${kind(streamed[0].birth_date)} ${fields.map((f) => `${f.name}:${f.dataTypeID}`).join(',')}`);
  } finally {
    await sequelize.connectionManager.releaseConnection(conn);
  }

  const [n, updated] = await Patient.update({ diagnosis: 'flu', birth_date: '1981-02-03' }, { where: { ssn }, returning: true });
  console.log(`updated ${n} ${rows(updated)}`);
  carol.diagnosis = 'mild asthma';
  carol.birth_date = '1990-03-05';
  await carol.save();
  await carol.reload();
  console.log(`saved ${rows([carol])}`);
  const destroyed = await Patient.destroy({ where: { ssn: '555-00-2222' } });
  console.log(`destroyed ${destroyed}`);
  const all = await Patient.findAll({ attributes, order: [['name', 'ASC']] });
  console.log(`all ${rows(all)}`);
  const raw = await sequelize.query('select ssn, birth_date from patients where ssn = :ssn', { replacements: { ssn }, type: QueryTypes.SELECT });
  console.log(`raw ${raw[0].ssn} ${kind(raw[0].birth_date)} ${day(raw[0].birth_date)}`);
  await sequelize.close();
}

// transaction is one pooled transaction of tenant (none when tenant is
// ''), presenting tok.
async function transaction(sequelize, Patient, tenant, tok, tag) {
  const res = { tenant, pid: 0, wrote: [], read: [], found: [], other: 0, refused: '' };
  const attrs = ['name', 'ssn', 'diagnosis', 'tenant_id'];
  try {
    await sequelize.transaction(async (t) => {
      res.pid = t.connection.processID;
      if (!tenant) {
        res.read = (await Patient.findAll({ attributes: attrs, transaction: t })).map(poolRow);
        const w = poolPatient('nobody', tag);
        try {
          await Patient.create({ name: w.name, ssn: w.ssn, diagnosis: w.diagnosis }, { transaction: t });
        } catch (e) {
          res.refused = (e.original && e.original.code) || String(e);
        }
        throw new Rollback();
      }
      await sequelize.query(setLocalToken(tok), { transaction: t });
      for (const i of [0, 1]) {
        const w = poolPatient(tenant, `${tag}.${i}`);
        const p = await Patient.create({ name: w.name, ssn: w.ssn, diagnosis: w.diagnosis }, { transaction: t });
        if (p.tenant_id !== tenant) throw new Error(`created as ${tenant}, stamped ${p.tenant_id}`);
        res.wrote.push(w);
      }
      res.read = (await Patient.findAll({ attributes: attrs, transaction: t })).map(poolRow);
      res.found = (await Patient.findAll({ attributes: attrs, where: { ssn: res.wrote[0].ssn }, transaction: t })).map(poolRow);
      res.other = await Patient.count({ where: { ssn: otherSSN(tenant) }, transaction: t });
    });
  } catch (e) {
    if (!(e instanceof Rollback)) throw new Error(`transaction ${tag} of ${tenant || 'no tenant'}: ${(e.original && e.original.code) || ''} ${e.message}`);
  }
  return res;
}

async function pool() {
  const { sequelize, Patient } = open(Number(process.env.PGCLOAK_POOL_MAX || 2));
  const results = await Promise.all(poolJobs('sequelize').map(([tenant, tok, tag]) => transaction(sequelize, Patient, tenant, tok, tag)));
  await sequelize.close();
  console.log(JSON.stringify(results));
}

main(process.env.PGCLOAK_MODE === 'pool' ? pool : tenant);
