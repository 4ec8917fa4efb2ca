// pgjdbc (Debian's libpostgresql-jdbc-java) through pgcloak, in one of two
// modes (PGCLOAK_MODE):
//
// tenant: as a tenant role, DatabaseMetaData of the encrypted patients
// table, PreparedStatement inserts (setString, setObject(LocalDate)) and
// searches, before and past pgjdbc's prepareThreshold (server-prepared
// statements, binary results), a fetch size inside a transaction (a portal
// read in batches), an update and a delete. Prints one line per fact for
// TestORMJDBC in proxy/orm_test.go to compare (it checks nothing itself).
//
// pool: a pool of PGCLOAK_POOL_MAX connections as the token role, used by
// 4 threads; each transaction of a tenant presents its token (SET LOCAL
// with the token in the text, or set_config with the token bound, in
// turn), inserts two rows, reads every row it sees with a fetch size,
// searches by ssn and for another tenant's ssn; every fifth transaction
// presents no token and tries an insert. Prints the transactions as a JSON
// array of proxy's poolTx for checkPoolRun.
//
// TestORMJDBC compiles it once with javac; by hand it also runs as a single
// source file:
//   java -cp /usr/share/java/postgresql.jar OrmJdbc.java
// Environment: PGCLOAK_URL (a jdbc:postgresql: URL through pgcloak, with
// prepareThreshold set), PGCLOAK_MODE; tenant: PGCLOAK_SSN (the ssn to
// insert and search; another tenant has a row with it too); pool:
// PGCLOAK_TOKENS ("tenant:jwt" pairs separated by spaces),
// PGCLOAK_POOL_MAX, PGCLOAK_ROUNDS (transactions per tenant).

import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.LocalDate;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.postgresql.PGStatement;

public class OrmJdbc {
    static String row(ResultSet rs) throws Exception {
        return rs.getString("name") + "|" + rs.getString("ssn") + "|" + rs.getString("email") + "|"
                + rs.getString("diagnosis") + "|" + rs.getObject("birth_date", LocalDate.class);
    }

    public static void main(String[] args) throws Exception {
        if ("pool".equals(System.getenv("PGCLOAK_MODE"))) {
            pool();
        } else {
            tenant();
        }
    }

    static void tenant() throws Exception {
        String ssn = System.getenv("PGCLOAK_SSN");
        try (Connection conn = DriverManager.getConnection(System.getenv("PGCLOAK_URL"))) {
            DatabaseMetaData md = conn.getMetaData();
            List<String> out = new ArrayList<>();
            try (ResultSet rs = md.getColumns(null, "public", "patients", "%")) {
                while (rs.next()) {
                    out.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME") + ":" + rs.getInt("DATA_TYPE")
                            + ":" + rs.getInt("ORDINAL_POSITION"));
                }
            }
            System.out.println("columns " + String.join(" ", out));
            out.clear();
            try (ResultSet rs = md.getIndexInfo(null, "public", "patients", false, false)) {
                while (rs.next()) {
                    out.add(rs.getString("INDEX_NAME") + ":" + rs.getString("COLUMN_NAME"));
                }
            }
            System.out.println("indexes " + String.join(" ", out));
            out.clear();
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "patients")) {
                while (rs.next()) {
                    out.add(rs.getString("COLUMN_NAME"));
                }
            }
            System.out.println("primary key " + String.join(" ", out));

            try (PreparedStatement ins = conn.prepareStatement(
                    "insert into patients (name, ssn, email, diagnosis, birth_date) values (?, ?, ?, ?, ?)")) {
                Object[][] rows = {
                    {"alice", ssn, "Alice@Example.com", "influenza", LocalDate.of(1980, 1, 2)},
                    {"carol", "555-00-1111", "carol@example.com", "asthma", LocalDate.of(1990, 3, 4)},
                    {"dave", "555-00-2222", "dave@example.com", "gout", LocalDate.of(1970, 5, 6)},
                };
                for (Object[] r : rows) {
                    for (int i = 0; i < 4; i++) {
                        ins.setString(i + 1, (String) r[i]);
                    }
                    ins.setObject(5, r[4]);
                    ins.executeUpdate();
                }
            }

            // Six runs: pgjdbc server-prepares from run prepareThreshold (never
            // with 0) and then asks for binary results.
            try (PreparedStatement q = conn.prepareStatement(
                    "select name, ssn, email, diagnosis, birth_date from patients where ssn = ?")) {
                for (int run = 1; run <= 6; run++) {
                    q.setString(1, ssn);
                    out.clear();
                    try (ResultSet rs = q.executeQuery()) {
                        while (rs.next()) {
                            out.add(row(rs));
                        }
                        if (run == 1 || run == 6) {
                            ResultSetMetaData rmd = rs.getMetaData();
                            System.out.println("search run " + run + " " + String.join(",", out) + " types "
                                    + rmd.getColumnTypeName(2) + "," + rmd.getColumnTypeName(5)
                                    + " server prepared " + q.unwrap(PGStatement.class).isUseServerPrepare());
                        } else if (out.size() != 1) {
                            System.out.println("search run " + run + " " + String.join(",", out));
                        }
                    }
                }
            }

            try (PreparedStatement q = conn.prepareStatement("select name from patients where email = ? or ssn = ? order by name")) {
                q.setString(1, "CAROL@example.com");
                q.setString(2, "555-00-2222");
                out.clear();
                try (ResultSet rs = q.executeQuery()) {
                    while (rs.next()) {
                        out.add(rs.getString(1));
                    }
                }
                System.out.println("email or ssn " + String.join(",", out));
            }

            conn.setAutoCommit(false);
            try (PreparedStatement q = conn.prepareStatement(
                    "select name, ssn, email, diagnosis, birth_date from patients where ssn <> ? order by name")) {
                q.setFetchSize(1);
                q.setString(1, "555-00-2222");
                out.clear();
                try (ResultSet rs = q.executeQuery()) {
                    while (rs.next()) {
                        out.add(row(rs));
                    }
                }
                System.out.println("fetch size 1 " + String.join(", ", out));
            }
            conn.commit();
            conn.setAutoCommit(true);

            try (PreparedStatement up = conn.prepareStatement("update patients set diagnosis = ?, birth_date = ? where ssn = ?")) {
                up.setString(1, "flu");
                up.setObject(2, LocalDate.of(1981, 2, 3));
                up.setString(3, ssn);
                System.out.println("updated rows " + up.executeUpdate());
            }
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("select name, ssn, email, diagnosis, birth_date from patients where ssn = '" + ssn + "'")) {
                while (rs.next()) {
                    System.out.println("updated " + row(rs) + " " + rs.getObject("birth_date").getClass().getSimpleName());
                }
            }

            try (PreparedStatement del = conn.prepareStatement("delete from patients where ssn = ?")) {
                del.setString(1, "555-00-2222");
                System.out.println("deleted rows " + del.executeUpdate());
            }
            // Globex's row has acme's ssn: acme's delete by it leaves that row.
            try (PreparedStatement del = conn.prepareStatement("delete from patients where ssn in (?, ?) and name = ?")) {
                del.setString(1, ssn);
                del.setString(2, "000-00-0000");
                del.setString(3, "bob");
                System.out.println("deleted bob rows " + del.executeUpdate());
            }
            out.clear();
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("select name from patients order by name")) {
                while (rs.next()) {
                    out.add(rs.getString(1));
                }
            }
            System.out.println("left " + String.join(",", out));
        }
    }

    // poolPatient is proxy's poolPatient: every value names the tenant.
    static String[] poolPatient(String tenant, String tag) {
        String name = tenant + "/" + tag;
        return new String[] {name, tenant + "-ssn-" + tag, "diagnosis of " + name};
    }

    // otherSSN is proxy's otherSSN: a row of another tenant that the test
    // wrote before (seedPool).
    static String otherSSN(String tenant) {
        return poolPatient(tenant.equals("tenant00") ? "tenant01" : "tenant00", "seed.0")[1];
    }

    static String json(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                b.append('\\');
            }
            if (c < 0x20) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }

    static String rowsJSON(List<String[]> rows) {
        List<String> out = new ArrayList<>();
        for (String[] r : rows) {
            out.add("{\"name\":" + json(r[0]) + ",\"ssn\":" + json(r[1]) + ",\"diagnosis\":" + json(r[2])
                    + ",\"tenant_id\":" + json(r[3]) + "}");
        }
        return "[" + String.join(",", out) + "]";
    }

    static List<String[]> poolRows(PreparedStatement q) throws SQLException {
        List<String[]> rows = new ArrayList<>();
        try (ResultSet rs = q.executeQuery()) {
            while (rs.next()) {
                rows.add(new String[] {rs.getString("name"), rs.getString("ssn"), rs.getString("diagnosis"), rs.getString("tenant_id")});
            }
        }
        return rows;
    }

    static final String SELECT_ALL = "select name, ssn, diagnosis, tenant_id from patients";

    // poolTx runs one transaction on conn, of tenant with token tok (no
    // token when tenant is empty); form 0 presents it with SET LOCAL,
    // form 1 with set_config. It returns the transaction as poolTx JSON.
    static String poolTx(Connection conn, String tenant, String tok, int form, String tag) throws SQLException {
        List<String[]> wrote = new ArrayList<>();
        List<String[]> read;
        List<String[]> found = new ArrayList<>();
        int other = 0;
        String refused = "";
        int pid;
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("select pg_backend_pid()")) {
            rs.next();
            pid = rs.getInt(1);
        }
        String insert = "insert into patients (name, ssn, diagnosis, birth_date) values (?, ?, ?, ?)";
        if (tenant.isEmpty()) {
            try (PreparedStatement q = conn.prepareStatement(SELECT_ALL)) {
                read = poolRows(q);
            }
            String[] w = poolPatient("nobody", tag);
            try (PreparedStatement ins = conn.prepareStatement(insert)) {
                for (int i = 0; i < 3; i++) {
                    ins.setString(i + 1, w[i]);
                }
                ins.setObject(4, LocalDate.of(2001, 2, 3));
                ins.executeUpdate();
            } catch (SQLException e) {
                refused = e.getSQLState();
            }
            conn.rollback();
        } else {
            if (form == 0) {
                try (Statement st = conn.createStatement()) {
                    st.execute("SET LOCAL pgcloak.tenant_token = '" + tok + "'");
                }
            } else {
                try (PreparedStatement q = conn.prepareStatement("select set_config('pgcloak.tenant_token', ?, true)")) {
                    q.setString(1, tok);
                    q.executeQuery().close();
                }
            }
            try (PreparedStatement ins = conn.prepareStatement(insert)) {
                for (int i = 0; i < 2; i++) {
                    String[] w = poolPatient(tenant, tag + "." + i);
                    for (int j = 0; j < 3; j++) {
                        ins.setString(j + 1, w[j]);
                    }
                    ins.setObject(4, LocalDate.of(2001, 2, 3));
                    ins.executeUpdate();
                    wrote.add(new String[] {w[0], w[1], w[2], tenant});
                }
            }
            try (PreparedStatement q = conn.prepareStatement(SELECT_ALL)) {
                q.setFetchSize(1);
                read = poolRows(q);
            }
            try (PreparedStatement q = conn.prepareStatement(SELECT_ALL + " where ssn = ?")) {
                q.setString(1, wrote.get(0)[1]);
                found = poolRows(q);
            }
            try (PreparedStatement q = conn.prepareStatement("select count(*) from patients where ssn = ?")) {
                q.setString(1, otherSSN(tenant));
                try (ResultSet rs = q.executeQuery()) {
                    rs.next();
                    other = rs.getInt(1);
                }
            }
            conn.commit();
        }
        return "{\"tenant\":" + json(tenant) + ",\"pid\":" + pid + ",\"wrote\":" + rowsJSON(wrote) + ",\"read\":"
                + rowsJSON(read) + ",\"found\":" + rowsJSON(found) + ",\"other\":" + other + ",\"refused\":"
                + json(refused) + "}";
    }

    static void pool() throws Exception {
        int max = Integer.parseInt(System.getenv("PGCLOAK_POOL_MAX"));
        int rounds = Integer.parseInt(System.getenv("PGCLOAK_ROUNDS"));
        List<String[]> tokens = new ArrayList<>();
        for (String pair : System.getenv("PGCLOAK_TOKENS").split(" ")) {
            tokens.add(pair.split(":", 2));
        }
        BlockingQueue<Connection> pool = new ArrayBlockingQueue<>(max);
        for (int i = 0; i < max; i++) {
            Connection conn = DriverManager.getConnection(System.getenv("PGCLOAK_URL"));
            conn.setAutoCommit(false);
            pool.add(conn);
        }
        // Jobs: {tenant, token, form, tag}; every fifth without a token.
        List<Object[]> jobs = new ArrayList<>();
        for (int r = 0; r < rounds; r++) {
            for (int k = 0; k < tokens.size(); k++) {
                jobs.add(new Object[] {tokens.get(k)[0], tokens.get(k)[1], (r + k) % 2, "j" + r});
                if (jobs.size() % 5 == 0) {
                    jobs.add(new Object[] {"", "", 0, "none" + r + "." + k});
                }
            }
        }
        ExecutorService threads = Executors.newFixedThreadPool(4);
        List<Future<String>> results = new ArrayList<>();
        for (Object[] job : jobs) {
            results.add(threads.submit(() -> {
                Connection conn = pool.take();
                try {
                    return poolTx(conn, (String) job[0], (String) job[1], (Integer) job[2], (String) job[3]);
                } catch (SQLException e) {
                    conn.rollback();
                    throw new SQLException("transaction of tenant '" + job[0] + "': " + e.getMessage(), e.getSQLState(), e);
                } finally {
                    pool.put(conn);
                }
            }));
        }
        List<String> out = new ArrayList<>();
        for (Future<String> f : results) {
            out.add(f.get());
        }
        threads.shutdown();
        for (Connection conn : pool) {
            conn.close();
        }
        System.out.println("[" + String.join(",\n", out) + "]");
    }
}
