// The migration of knex.js: a table of the application's beside the
// encrypted patients (which "pgcloak schema" created), run by the
// unscoped migrator role. PGCLOAK_APP_ROLE is the tenant role that uses it.
'use strict';

exports.up = async function up(knex) {
  await knex.schema.createTable('visits', (t) => {
    t.increments('id');
    t.integer('patient_id').notNullable();
    t.text('note');
  });
  const role = process.env.PGCLOAK_APP_ROLE;
  await knex.raw('grant select, insert on visits to ??', [role]);
  await knex.raw('grant usage on sequence visits_id_seq to ??', [role]);
};

exports.down = async function down(knex) {
  await knex.schema.dropTable('visits');
};
