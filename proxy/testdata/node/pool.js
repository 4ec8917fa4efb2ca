// node-postgres's Pool as a multi-tenant application uses it against
// pgcloak: one login role (a token role), a few pooled connections, and a
// tenant per transaction from a signed tenant token. Every transaction is
// started at once, so the pool interleaves tenants on its connections.
// Prints what each transaction wrote and read as JSON (a list of poolTx)
// for TestTokenPoolNode to check; it checks nothing itself.
//
// Environment: PGCLOAK_URL; PGCLOAK_TOKENS, {"tenant": ["jwt", ...]}: one
// transaction per token; PGCLOAK_TOKEN_FORM, set_local (SET LOCAL with
// the token as a literal, a query without values: the simple protocol) or
// set_config (set_config('pgcloak.tenant_token', $1, true), the token a
// bound value: the extended protocol); PGCLOAK_POOL_MAX, the pool's size.
'use strict';
const { Pool } = require('pg');

const form = process.env.PGCLOAK_TOKEN_FORM || 'set_local';
const tokens = JSON.parse(process.env.PGCLOAK_TOKENS);

function patient(tenant, tag) {
  const name = `${tenant}/${tag}`;
  return { name, ssn: `${tenant}-ssn-${tag}`, diagnosis: `diagnosis of ${name}`, tenant_id: tenant };
}

// otherSSN: the seed row of another tenant (see seedPool in
// proxy/tokenpool_test.go).
function otherSSN(tenant) {
  return patient(tenant === 'tenant00' ? 'tenant01' : 'tenant00', 'seed.0').ssn;
}

async function setToken(client, tok) {
  if (form === 'set_config') {
    await client.query("select pg_catalog.set_config('pgcloak.tenant_token', $1, true)", [tok]);
  } else {
    // A literal: quote it as PostgreSQL would (a JWT has no quote, but
    // an application must not trust that).
    await client.query(`SET LOCAL pgcloak.tenant_token = '${tok.replace(/'/g, "''")}'`);
  }
}

const insert = 'insert into patients (name, ssn, diagnosis) values ($1, $2, $3)';
const select = 'select name, ssn, diagnosis, tenant_id from patients';

async function transaction(pool, tenant, tok, tag) {
  const client = await pool.connect();
  const res = { tenant, pid: client.processID, wrote: [], read: [], found: [], other: 0, refused: '' };
  try {
    await client.query('BEGIN');
    if (!tenant) {
      res.read = (await client.query(select)).rows;
      const w = patient('nobody', tag);
      try {
        await client.query(insert, [w.name, w.ssn, w.diagnosis]);
      } catch (e) {
        res.refused = e.code || String(e);
      }
      await client.query('ROLLBACK');
      return res;
    }
    await setToken(client, tok);
    for (const i of [0, 1]) {
      const w = patient(tenant, `${tag}.${i}`);
      await client.query(insert, [w.name, w.ssn, w.diagnosis]);
      res.wrote.push(w);
    }
    res.read = (await client.query(select)).rows;
    // A named statement: prepared once per connection, bound by every
    // tenant that connection serves.
    res.found = (await client.query({ name: 'pool-search', text: select + ' where ssn = $1', values: [res.wrote[0].ssn] })).rows;
    res.other = (await client.query('select count(*)::int as n from patients where ssn = $1', [otherSSN(tenant)])).rows[0].n;
    await client.query('COMMIT');
    return res;
  } catch (e) {
    await client.query('ROLLBACK').catch(() => {});
    throw new Error(`transaction ${tag} of ${tenant || 'no tenant'}: ${e.code || ''} ${e.message}`);
  } finally {
    client.release();
  }
}

async function main() {
  const pool = new Pool({ connectionString: process.env.PGCLOAK_URL, max: Number(process.env.PGCLOAK_POOL_MAX || 2) });
  // Round-robin over tenants, with a transaction without a token after
  // every third.
  const jobs = [];
  const rounds = Math.max(...Object.values(tokens).map((t) => t.length));
  for (let r = 0; r < rounds; r++) {
    for (const [tenant, toks] of Object.entries(tokens)) {
      if (r >= toks.length) continue;
      jobs.push([tenant, toks[r], `node${r}.${jobs.length}`]);
      if (jobs.length % 3 === 0) jobs.push(['', '', `none${r}.${jobs.length}`]);
    }
  }
  const results = await Promise.all(jobs.map(([tenant, tok, tag]) => transaction(pool, tenant, tok, tag)));
  await pool.end();
  console.log(JSON.stringify(results));
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
