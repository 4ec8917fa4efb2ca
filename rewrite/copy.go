package rewrite

import (
	"fmt"
	"slices"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v5"
)

// CopyFormat is a COPY data format.
type CopyFormat int

// COPY formats. The values are explicit because plans are compared in
// tests.
const (
	CopyText   CopyFormat = 0
	CopyCSV    CopyFormat = 1
	CopyBinary CopyFormat = 2
)

// String returns the format's name as COPY spells it.
func (f CopyFormat) String() string {
	switch f {
	case CopyCSV:
		return "csv"
	case CopyBinary:
		return "binary"
	}
	return "text"
}

// CopyPlan is what the proxy must do with the data of a COPY on a declared
// table: COPY ... FROM STDIN rows are encrypted field by field (and index
// fields appended) before they reach PostgreSQL; COPY ... TO STDOUT rows
// are decrypted before they reach the client.
type CopyPlan struct {
	From bool
	// Relation is the table as COPY's error context names it (the bare
	// table name), for FROM.
	Relation string
	Format   CopyFormat
	// The options of the text and CSV formats, defaults applied.
	Delimiter byte
	Null      string
	Quote     byte
	Escape    byte
	Header    bool

	// Columns are the client's columns of a COPY FROM, in order; Column
	// is nil for a plain one.
	Columns []ColumnRef
	// Indexes are the index fields the proxy appends to each row of a
	// COPY FROM, in order: the position in Columns of the declared column
	// each is computed from. The rewritten COPY names them last.
	Indexes []int

	// Describe is, for COPY TO, a query with the same output columns as
	// the COPY, whose RowDescription tells the proxy which fields are
	// declared columns.
	Describe string
}

// copyStmt analyses a COPY statement. A COPY that names a declared table
// or reads one through a query is planned; the rest passes through.
func (a *analyzer) copyStmt(c *pg_query.CopyStmt) error {
	var t *declTable
	loc := int32(-1)
	if rv := c.Relation; rv != nil {
		t, loc = a.s.anyTableNamed(rv.Schemaname, rv.Relname), rv.Location
	} else if c.Query != nil {
		t = a.touches(c.Query)
	}
	if t == nil {
		// COPY t FROM STDIN WHERE <expr> on another table: its WHERE is
		// not analysed, so it must not reach a declared table (a
		// subquery there is PostgreSQL's error, but its text, plaintext
		// included, would be logged).
		if w := c.WhereClause; w != nil {
			if t := a.touches(w); t != nil {
				return a.refuseTable(kindCopy, t, "WHERE with a query over it", loc)
			}
		}
		return nil
	}
	refuse := func(what string) error { return a.refuseTable(kindCopy, t, what, loc) }
	if a.plan.Statements != 1 {
		return refuse("inside a multi-statement query")
	}
	if c.Filename != "" || c.IsProgram {
		return refuse("with a server-side file or program (use STDIN / STDOUT, e.g. psql's \\copy)")
	}
	if c.WhereClause != nil {
		return refuse("with WHERE")
	}
	cp := &CopyPlan{From: c.IsFrom, Delimiter: '\t', Null: `\N`, Quote: '"', Escape: 0}
	if err := a.copyOptions(c, cp, refuse); err != nil {
		return err
	}

	if c.Query != nil {
		if c.IsFrom {
			return refuse("FROM a query")
		}
		before := a.edits
		if err := a.dispatch(c.Query); err != nil {
			return err
		}
		if a.edits != before {
			return a.refuseTable(kindCopy, t, "(query) that searches an encrypted column", loc)
		}
		// The describe must report the very columns the COPY writes.
		text, err := deparseNode(c.Query)
		if err != nil || verifyDeparse(c.Query, text) != nil {
			return a.refuseRewrite("the SQL deparser cannot render the COPY query")
		}
		cp.Describe = text
		a.plan.Copy = cp
		return nil
	}

	rel := quoteIdent(t.schema) + "." + quoteIdent(t.name)
	var names []string
	for _, n := range c.Attlist {
		name := n.GetString_().GetSval()
		if t.indexColumn(name) != nil {
			return a.refuseIndexColumn(t, name, loc)
		}
		names = append(names, name)
	}
	if !c.IsFrom {
		cols := "*"
		if len(names) > 0 {
			quoted := make([]string, len(names))
			for i, n := range names {
				quoted[i] = quoteIdent(n)
			}
			cols = strings.Join(quoted, ", ")
		}
		cp.Describe = "SELECT " + cols + " FROM ONLY " + rel
		a.plan.Copy = cp
		return nil
	}

	if len(names) == 0 {
		return a.refuseTable(kindInsertNoColumns, t, "COPY FROM without a column list", loc)
	}
	if !slices.ContainsFunc(names, func(n string) bool { return t.column(n) != nil }) {
		return nil // no declared column: the rows pass through
	}
	cp.Relation = t.name
	for i, name := range names {
		col := t.column(name)
		cp.Columns = append(cp.Columns, ColumnRef{Schema: t.schema, Table: t.name, Column: col})
		if col != nil && searchable(col) {
			cp.Indexes = append(cp.Indexes, i)
			c.Attlist = append(c.Attlist, pg_query.MakeStrNode(col.IndexColumn))
		}
		if col != nil {
			a.edit(t.ref(col))
		}
	}
	a.plan.Copy = cp
	return nil
}

// copyOptions reads COPY's options into cp, refusing what the proxy cannot
// follow on a declared table.
func (a *analyzer) copyOptions(c *pg_query.CopyStmt, cp *CopyPlan, refuse func(string) error) error {
	var nullSet, delimSet, quoteSet, escapeSet bool
	oneByte := func(d *pg_query.DefElem, what string) (byte, error) {
		s := defString(d)
		if len(s) != 1 || s[0] >= 0x80 {
			return 0, refuse(fmt.Sprintf("with a %s that is not a single one-byte character", what))
		}
		return s[0], nil
	}
	for _, o := range c.Options {
		d := o.GetDefElem()
		if d == nil {
			return refuse("with an option pgcloak does not know")
		}
		var err error
		switch strings.ToLower(d.Defname) {
		case "format":
			switch strings.ToLower(defString(d)) {
			case "text":
				cp.Format = CopyText
			case "csv":
				cp.Format = CopyCSV
			case "binary":
				cp.Format = CopyBinary
			default:
				return refuse("in an unknown format")
			}
		case "delimiter":
			cp.Delimiter, err = oneByte(d, "DELIMITER")
			delimSet = true
		case "null":
			cp.Null, nullSet = defString(d), true
		case "header":
			switch v := strings.ToLower(defString(d)); v {
			case "", "true", "on", "1":
				cp.Header = true
			case "false", "off", "0":
				cp.Header = false
			default:
				return refuse("with HEADER " + strings.ToUpper(v))
			}
		case "quote":
			cp.Quote, err = oneByte(d, "QUOTE")
			quoteSet = true
		case "escape":
			cp.Escape, err = oneByte(d, "ESCAPE")
			escapeSet = true
		case "freeze":
		case "encoding":
			if e := strings.ToLower(strings.ReplaceAll(defString(d), "-", "")); e != "utf8" {
				return refuse("with an ENCODING other than UTF8")
			}
		default:
			return refuse("with " + strings.ToUpper(d.Defname))
		}
		if err != nil {
			return err
		}
	}
	if cp.Format == CopyCSV {
		if !delimSet {
			cp.Delimiter = ','
		}
		if !nullSet {
			cp.Null = ""
		}
		if !escapeSet {
			cp.Escape = cp.Quote
		}
	} else if quoteSet || escapeSet {
		return refuse("with QUOTE or ESCAPE outside CSV")
	}
	if cp.Delimiter == '\n' || cp.Delimiter == '\r' || cp.Delimiter == '\\' && cp.Format == CopyText ||
		strings.ContainsAny(cp.Null, "\r\n") {
		return refuse("with a DELIMITER or NULL that PostgreSQL refuses")
	}
	return nil
}

// defString is a DefElem's argument as text: a string, an identifier, a
// number or a boolean; "" when it has none.
func defString(d *pg_query.DefElem) string {
	if d.Arg == nil {
		return ""
	}
	switch v := d.Arg.Node.(type) {
	case *pg_query.Node_String_:
		return v.String_.Sval
	case *pg_query.Node_Integer:
		return fmt.Sprint(v.Integer.Ival)
	case *pg_query.Node_Boolean:
		if v.Boolean.Boolval {
			return "true"
		}
		return "false"
	case *pg_query.Node_TypeName:
		return typeName(v.TypeName)
	}
	return "?"
}

// deparseNode renders one statement node as SQL.
func deparseNode(n *pg_query.Node) (string, error) {
	return pg_query.Deparse(&pg_query.ParseResult{Stmts: []*pg_query.RawStmt{{Stmt: n}}})
}

// quoteIdent quotes an identifier for SQL.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
