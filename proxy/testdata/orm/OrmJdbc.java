// pgjdbc (Debian's libpostgresql-jdbc-java) through pgcloak as a tenant:
// DatabaseMetaData of the encrypted patients table, PreparedStatement
// inserts (setString, setObject(LocalDate)) and searches, past pgjdbc's
// prepareThreshold (server-prepared statements, binary results), a fetch
// size inside a transaction (a portal read in batches), an update.
//
// Prints one line per fact for TestORMJDBC in proxy/orm_test.go to compare
// (it checks nothing itself). Run as a single source file:
//   java -cp /usr/share/java/postgresql.jar OrmJdbc.java
// Environment: PGCLOAK_URL (a jdbc:postgresql: URL of a tenant role's
// connection through pgcloak), PGCLOAK_SSN (the ssn to insert and search;
// another tenant has a row with it too).

import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.Statement;
import java.time.LocalDate;
import java.util.ArrayList;
import java.util.List;

public class OrmJdbc {
    static String row(ResultSet rs) throws Exception {
        return rs.getString("name") + "|" + rs.getString("ssn") + "|" + rs.getString("email") + "|"
                + rs.getString("diagnosis") + "|" + rs.getObject("birth_date", LocalDate.class);
    }

    public static void main(String[] args) throws Exception {
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

            // Six runs: pgjdbc server-prepares from the fifth (prepareThreshold)
            // and then asks for binary results.
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
                                    + rmd.getColumnTypeName(2) + "," + rmd.getColumnTypeName(5));
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
        }
    }
}
