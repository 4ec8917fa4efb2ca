# ActiveRecord (Debian's ruby-activerecord, 6.1) through pgcloak as a
# tenant: a Patient model on the encrypted patients table, with prepared
# statements on or off (PGCLOAK_PREPARED=true|false).
#
# Prints one line per fact for TestORMActiveRecord in proxy/orm_test.go to
# compare (it checks nothing itself): the reflected columns, what a search
# on the encrypted ssn finds, the Ruby classes and encodings read back,
# find_each, an update.
#
# Environment: PGCLOAK_URL (a tenant role's connection through pgcloak),
# PGCLOAK_PREPARED, PGCLOAK_SSN (the ssn to create and search; another
# tenant has a row with it too).

require "active_record"
require "date"

prepared = ENV.fetch("PGCLOAK_PREPARED") == "true"
ssn = ENV.fetch("PGCLOAK_SSN")
ActiveRecord::Base.establish_connection(url: ENV.fetch("PGCLOAK_URL"), prepared_statements: prepared)

class Patient < ActiveRecord::Base
  self.table_name = "patients"
end

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

conn = Patient.connection
puts "indexes #{conn.indexes("patients").map { |i| "#{i.name}:#{i.columns.join(",")}" }.sort.inspect}"
puts "check constraints #{conn.check_constraints("patients").map(&:name).sort.inspect}"
# What rails db:schema:dump writes for the table.
schema = StringIO.new
ActiveRecord::SchemaDumper.dump(conn, schema)
dump = schema.string
puts dump[dump.index('  create_table "patients"')..].lines.map(&:rstrip).reject { |l| l.empty? || l == "end" }
