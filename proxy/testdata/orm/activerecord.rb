# ActiveRecord (Debian's ruby-activerecord, 6.1) through pgcloak: a
# Patient model on the encrypted patients table, with prepared statements
# on or off (PGCLOAK_PREPARED=true|false), in one of two modes
# (PGCLOAK_MODE):
#
# tenant: as a tenant role. Prints one line per fact for
# TestORMActiveRecord in proxy/orm_test.go to compare (it checks nothing
# itself): the reflected columns, what a search on the encrypted ssn
# finds, the Ruby classes and encodings read back, find_each, an update,
# destroy and delete_all, the schema dump.
#
# pool: as the token role, ActiveRecord's connection pool (PGCLOAK_POOL_MAX
# connections) used by 4 threads; each Patient.transaction of a tenant
# presents its token (SET LOCAL through connection.execute, or set_config
# with the token as a bind, in turn), creates two rows, reads every row it
# sees, searches by ssn and for another tenant's ssn; every fifth
# transaction presents no token and tries a create. Prints the
# transactions as a JSON array of proxy's poolTx for checkPoolRun.
#
# Environment: PGCLOAK_URL (a connection through pgcloak), PGCLOAK_PREPARED,
# PGCLOAK_MODE; tenant: PGCLOAK_SSN (the ssn to create and search; another
# tenant has a row with it too); pool: PGCLOAK_TOKENS ("tenant:jwt" pairs
# separated by spaces), PGCLOAK_POOL_MAX, PGCLOAK_ROUNDS (transactions per
# tenant).

require "active_record"
require "date"
require "json"

prepared = ENV.fetch("PGCLOAK_PREPARED") == "true"
pool_mode = ENV.fetch("PGCLOAK_MODE") == "pool"
ActiveRecord::Base.establish_connection(url: ENV.fetch("PGCLOAK_URL"), prepared_statements: prepared,
                                        pool: Integer(ENV.fetch("PGCLOAK_POOL_MAX", "1")))

class Patient < ActiveRecord::Base
  self.table_name = "patients"
end

# pool_patient is proxy's poolPatient: every value names the tenant.
def pool_patient(tenant, tag)
  name = "#{tenant}/#{tag}"
  { "name" => name, "ssn" => "#{tenant}-ssn-#{tag}", "diagnosis" => "diagnosis of #{name}" }
end

# other_ssn is proxy's otherSSN: a row of another tenant that the test
# wrote before (seedPool).
def other_ssn(tenant)
  pool_patient(tenant == "tenant00" ? "tenant01" : "tenant00", "seed.0")["ssn"]
end

def pool_row(r)
  { "name" => r.name, "ssn" => r.ssn, "diagnosis" => r.diagnosis, "tenant_id" => r.tenant_id }
end

# pool_tx runs one transaction of tenant (none when tenant is "") on a
# connection of the pool and returns it as proxy's poolTx.
def pool_tx(tenant, tok, form, tag)
  res = { "tenant" => tenant, "wrote" => [], "read" => [], "found" => [], "other" => 0, "refused" => "" }
  ActiveRecord::Base.connection_pool.with_connection do |conn|
    Patient.transaction do
      res["pid"] = conn.select_value("select pg_backend_pid()")
      if tenant.empty?
        res["read"] = Patient.all.map { |r| pool_row(r) }
        w = pool_patient("nobody", tag)
        begin
          Patient.create!(name: w["name"], ssn: w["ssn"], diagnosis: w["diagnosis"], birth_date: Date.new(2001, 2, 3))
        rescue ActiveRecord::StatementInvalid => e
          res["refused"] = e.cause.result.error_field(PG::PG_DIAG_SQLSTATE)
        end
        raise ActiveRecord::Rollback
      end
      if form.zero?
        conn.execute("SET LOCAL pgcloak.tenant_token = '#{tok}'")
      else
        bind = ActiveRecord::Relation::QueryAttribute.new("token", tok, ActiveRecord::Type::String.new)
        conn.exec_query("select set_config('pgcloak.tenant_token', $1, true)", "token", [bind])
      end
      2.times do |i|
        w = pool_patient(tenant, "#{tag}.#{i}")
        p = Patient.create!(name: w["name"], ssn: w["ssn"], diagnosis: w["diagnosis"], birth_date: Date.new(2001, 2, 3))
        back = Patient.find(p.id)
        unless back.tenant_id == tenant && back.birth_date == Date.new(2001, 2, 3)
          raise "row #{p.id} read back with tenant #{back.tenant_id.inspect} and #{back.birth_date.inspect}"
        end
        res["wrote"] << w.merge("tenant_id" => tenant)
      end
      res["read"] = Patient.all.map { |r| pool_row(r) }
      res["found"] = Patient.where(ssn: res["wrote"][0]["ssn"]).map { |r| pool_row(r) }
      res["other"] = Patient.where(ssn: [other_ssn(tenant), "000-00-0000"]).count
    end
  end
  res
end

if pool_mode
  tokens = ENV.fetch("PGCLOAK_TOKENS").split(" ").map { |pair| pair.split(":", 2) }
  jobs = []
  Integer(ENV.fetch("PGCLOAK_ROUNDS")).times do |r|
    tokens.each_with_index do |(tenant, tok), k|
      jobs << [jobs.size, tenant, tok, (r + k) % 2, "a#{r}"]
      jobs << [jobs.size, "", "", 0, "none#{r}.#{k}"] if jobs.size % 5 == 4
    end
  end
  queue = Queue.new
  jobs.each { |j| queue << j }
  results = Array.new(jobs.size)
  threads = 4.times.map do
    Thread.new do
      loop do
        i, tenant, tok, form, tag = queue.pop(true)
        results[i] = pool_tx(tenant, tok, form, tag)
      rescue ThreadError
        break
      end
    end
  end
  threads.each(&:join)
  puts JSON.generate(results)
  exit
end

ssn = ENV.fetch("PGCLOAK_SSN")

def show(r)
  [r.name, r.ssn, r.email, r.diagnosis, r.birth_date&.iso8601].join("|")
end

puts "prepared #{Patient.connection.prepared_statements}"
puts "columns " + Patient.columns.map { |c| "#{c.name}:#{c.type}:#{c.sql_type}" }.join(" ")
puts "bidx attribute #{Patient.attribute_names.grep(/_bidx\z/).inspect}"
puts "primary key #{Patient.primary_key}"

p1 = Patient.create!(name: "alice", ssn: ssn, email: "Alice@Example.com", diagnosis: "influenza", birth_date: Date.new(1980, 1, 2))
Patient.create!(name: "carol", ssn: "555-00-1111", email: "carol@example.com", diagnosis: "asthma", birth_date: Date.new(1990, 3, 4))
puts "created id #{p1.id.class} tenant #{Patient.find(p1.id).tenant_id}"

found = Patient.where(ssn: ssn).to_a
puts "where ssn #{found.map { |r| show(r) }.join(",")}"
puts "where email #{Patient.where(email: "alice@example.com").pluck(:name).inspect}"
puts "where ssn in #{Patient.where(ssn: [ssn, "000-00-0000"]).order(:id).pluck(:name).inspect}"
puts "find_by #{Patient.find_by(ssn: "555-00-1111")&.name}"
puts "exists #{Patient.exists?(ssn: ssn)} count #{Patient.where(ssn: ssn).count}"

r = found.first
puts "classes ssn=#{r.ssn.class}/#{r.ssn.encoding} diagnosis=#{r.diagnosis.class}/#{r.diagnosis.encoding} birth_date=#{r.birth_date.class}"
puts "raw #{Patient.connection.select_rows("select ssn, birth_date from patients where ssn = '#{ssn}'").inspect}"

names = []
Patient.find_each(batch_size: 1) { |x| names << "#{x.name}:#{x.birth_date.iso8601}" }
puts "find_each #{names.join(",")}"

r.update!(diagnosis: "flu", birth_date: Date.new(1981, 2, 3))
r2 = Patient.find(r.id)
puts "updated #{show(r2)}"
Patient.where(ssn: "555-00-1111").update_all(diagnosis: "gout")
puts "update_all #{Patient.find_by(name: "carol").diagnosis}"

dave = Patient.create!(name: "dave", ssn: "555-00-2222", email: "dave@example.com", diagnosis: "gout", birth_date: Date.new(1970, 5, 6))
destroyed = Patient.find_by(ssn: "555-00-2222").destroy
puts "destroy #{destroyed.name} destroyed #{destroyed.destroyed?} find_by #{Patient.find_by(id: dave.id).inspect}"
puts "delete_all #{Patient.where(ssn: "555-00-1111").delete_all}"
# Globex's bob has acme's ssn: acme's delete by it leaves his row.
puts "delete_all bob #{Patient.where(ssn: [ssn, "000-00-0000"], name: "bob").delete_all}"
puts "left #{Patient.order(:name).pluck(:name).inspect}"

conn = Patient.connection
puts "indexes #{conn.indexes("patients").map { |i| "#{i.name}:#{i.columns.join(",")}" }.sort.inspect}"
puts "check constraints #{conn.check_constraints("patients").map(&:name).sort.inspect}"
# What rails db:schema:dump writes for the table.
schema = StringIO.new
ActiveRecord::SchemaDumper.dump(conn, schema)
dump = schema.string
puts dump[dump.index('  create_table "patients"')..].lines.map(&:rstrip).reject { |l| l.empty? || l == "end" }
