package proxy

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestDescribelessExecute: a driver may Parse, Bind and Execute without
// ever describing the statement or the portal. The proxy then describes the
// portal itself, so declared columns are decrypted (never relayed as
// ciphertext), and the client sees only the responses to what it sent.
func TestDescribelessExecute(t *testing.T) {
	conn := aliceConn(t)
	ctx := ctxT(t)
	fe := conn.Frontend()

	// Unnamed statement; text results, then binary results (a text value's
	// binary form is its bytes); then an INSERT that returns no rows, and
	// a named statement executed twice.
	fe.Send(&pgproto3.Parse{Query: "select ssn, email from patients where name = $1"})
	fe.Send(&pgproto3.Bind{Parameters: [][]byte{[]byte("alice")}})
	fe.Send(&pgproto3.Execute{})
	fe.Send(&pgproto3.Bind{Parameters: [][]byte{[]byte("alice")}, ResultFormatCodes: []int16{1}})
	fe.Send(&pgproto3.Execute{})
	fe.Send(&pgproto3.Parse{Query: "insert into patients (name, ssn) values ($1, $2)"})
	fe.Send(&pgproto3.Bind{Parameters: [][]byte{[]byte("bob"), []byte("987-65-4321")}})
	fe.Send(&pgproto3.Execute{})
	fe.Send(&pgproto3.Parse{Name: "byname", Query: "select ssn from patients where name = $1"})
	for _, name := range []string{"alice", "bob"} {
		fe.Send(&pgproto3.Bind{PreparedStatement: "byname", Parameters: [][]byte{[]byte(name)}})
		fe.Send(&pgproto3.Execute{})
	}
	fe.Send(&pgproto3.Sync{})
	fatalIf(t, fe.Flush(), "flush")

	var got []string
	for {
		msg, err := conn.ReceiveMessage(ctx)
		fatalIf(t, err, "receive")
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			for _, v := range m.Values {
				got = append(got, string(v))
			}
		case *pgproto3.CommandComplete:
			got = append(got, string(m.CommandTag))
		case *pgproto3.ParseComplete, *pgproto3.BindComplete:
		case *pgproto3.ErrorResponse:
			t.Fatalf("error: %s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			want := []string{
				"123-45-6789", "alice@example.com", "SELECT 1",
				"123-45-6789", "alice@example.com", "SELECT 1",
				"INSERT 0 1",
				"123-45-6789", "SELECT 1",
				"987-65-4321", "SELECT 1",
			}
			mustEqual(t, "responses", strings.Join(got, "|"), strings.Join(want, "|"))
			return
		default:
			t.Fatalf("the client received %T, which it did not ask for", msg)
		}
	}
}

// TestPortalShapeFollowsTheBind: the rows of a portal are decrypted by the
// row shape the proxy went by when it bound the portal, whatever happens to
// the statement's name in between, and a name deallocated by SQL forgets
// its shape.
func TestPortalShapeFollowsTheBind(t *testing.T) {
	conn := aliceConn(t)
	ctx := ctxT(t)
	fe := conn.Frontend()
	const bySSN = "select ssn from patients where name = $1"
	// run sends msgs and a Sync, and returns the values of the rows and
	// the SQLSTATE of an error, up to ReadyForQuery.
	run := func(msgs ...pgproto3.FrontendMessage) (rows []string, code string) {
		t.Helper()
		for _, m := range msgs {
			fe.Send(m)
		}
		fe.Send(&pgproto3.Sync{})
		fatalIf(t, fe.Flush(), "flush")
		for {
			msg, err := conn.ReceiveMessage(ctx)
			fatalIf(t, err, "receive")
			switch m := msg.(type) {
			case *pgproto3.DataRow:
				rows = append(rows, string(m.Values[0]))
			case *pgproto3.ErrorResponse:
				code = m.Code
			case *pgproto3.ReadyForQuery:
				return rows, code
			}
		}
	}
	alice := [][]byte{[]byte("alice")}

	// The unnamed statement described, then parsed again with the same
	// text and executed without a Describe.
	run(&pgproto3.Parse{Query: bySSN}, &pgproto3.Describe{ObjectType: 'S'})
	rows, code := run(&pgproto3.Parse{Query: bySSN}, &pgproto3.Bind{Parameters: alice}, &pgproto3.Execute{})
	mustEqual(t, "same text parsed again", strings.Join(rows, ",")+code, "123-45-6789")

	// A portal bound, then its statement's name closed and parsed again
	// with another text before the portal is executed.
	run(&pgproto3.Parse{Name: "st", Query: bySSN}, &pgproto3.Describe{ObjectType: 'S', Name: "st"})
	rows, code = run(
		&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "st", Parameters: alice},
		&pgproto3.Close{ObjectType: 'S', Name: "st"},
		&pgproto3.Parse{Name: "st", Query: "select name from patients where name = $1"},
		&pgproto3.Execute{Portal: "p"},
	)
	mustEqual(t, "portal of a statement parsed again", strings.Join(rows, ",")+code, "123-45-6789")

	// DEALLOCATE, then SQL PREPARE of the same name with another text.
	run(&pgproto3.Close{ObjectType: 'S', Name: "st"}, &pgproto3.Parse{Name: "st", Query: bySSN}, &pgproto3.Describe{ObjectType: 'S', Name: "st"})
	for _, sql := range []string{"DEALLOCATE st", "PREPARE st(text) AS select name from patients where name = $1"} {
		_, err := conn.Exec(ctx, sql).ReadAll()
		fatalIf(t, err, "%s", sql)
	}
	rows, code = run(&pgproto3.Bind{PreparedStatement: "st", Parameters: alice}, &pgproto3.Execute{})
	mustEqual(t, "statement prepared again by SQL", strings.Join(rows, ",")+code, "alice")
}
