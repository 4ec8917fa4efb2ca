package coltype

import (
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgtype"
)

// typeInfo describes one declared type.
type typeInfo struct {
	oid  uint32
	name string // as PostgreSQL's messages name it ("integer", "timestamp with time zone")
	// canon returns the canonical text of a valid input; the input is
	// already known to be valid UTF-8 without NUL bytes.
	canon func(s string, zone *time.Location) (string, error)
}

// types are the declared types of SPEC §3, by the name the configuration
// uses.
var types = map[string]typeInfo{
	"text":        {pgtype.TextOID, "text", canonText},
	"varchar":     {pgtype.VarcharOID, "character varying", canonText},
	"bpchar":      {pgtype.BPCharOID, "character", canonText},
	"int2":        {pgtype.Int2OID, "smallint", canonInt(16, "smallint")},
	"int4":        {pgtype.Int4OID, "integer", canonInt(32, "integer")},
	"int8":        {pgtype.Int8OID, "bigint", canonInt(64, "bigint")},
	"numeric":     {pgtype.NumericOID, "numeric", canonNumeric},
	"float4":      {pgtype.Float4OID, "real", canonFloat(32, "real")},
	"float8":      {pgtype.Float8OID, "double precision", canonFloat(64, "double precision")},
	"bool":        {pgtype.BoolOID, "boolean", canonBool},
	"date":        {pgtype.DateOID, "date", canonDate},
	"timestamp":   {pgtype.TimestampOID, "timestamp without time zone", canonTimestamp},
	"timestamptz": {pgtype.TimestamptzOID, "timestamp with time zone", canonTimestamptz},
	"uuid":        {pgtype.UUIDOID, "uuid", canonUUID},
	"json":        {pgtype.JSONOID, "json", canonJSON},
	"jsonb":       {pgtype.JSONBOID, "jsonb", canonJSONB},
	"bytea":       {pgtype.ByteaOID, "bytea", canonBytea},
}

// Types lists the declared types coltype knows, in the order of SPEC §3
// (and of config.SupportedTypes).
func Types() []string {
	return []string{
		"text", "varchar", "bpchar", "int2", "int4", "int8", "numeric", "float4",
		"float8", "bool", "date", "timestamp", "timestamptz", "uuid", "json", "jsonb", "bytea",
	}
}

// Supported reports whether typ is a declared type coltype knows.
func Supported(typ string) bool {
	_, ok := types[typ]
	return ok
}

// OID returns the PostgreSQL type OID of a declared type, which proxy
// shows in RowDescription and ParameterDescription; 0 for an unknown type.
func OID(typ string) uint32 { return types[typ].oid }

// Canonical validates text, a value of the declared type typ in
// PostgreSQL's text format, as PostgreSQL's input function for that type
// would, and returns the text PostgreSQL would print for it (with
// DateStyle ISO, TimeZone UTC, extra_float_digits 1, bytea_output hex).
// The canonical text is what pgcloak seals and indexes, so that values
// PostgreSQL considers equal ("042" and "42" for int4) are stored and
// searched alike.
//
// A zone-less timestamptz is taken to be UTC; CanonicalInZone takes the
// session's TimeZone instead.
//
// An invalid value is an *Error carrying the SQLSTATE PostgreSQL would
// raise; its message never contains the value. An unknown typ is a plain
// error: declarations are validated before they get here.
func Canonical(typ, text string) (string, error) {
	return CanonicalInZone(typ, text, time.UTC)
}

// CanonicalInZone is Canonical with zone standing in for the session's
// TimeZone: it is the zone of a timestamptz written without one. Output is
// UTC regardless.
func CanonicalInZone(typ, text string, zone *time.Location) (string, error) {
	t, ok := types[typ]
	if !ok {
		return "", fmt.Errorf("coltype: unsupported type %q", typ)
	}
	if zone == nil {
		zone = time.UTC
	}
	if err := checkEncoding(text); err != nil {
		return "", err
	}
	return t.canon(text, zone)
}

// checkEncoding applies what PostgreSQL checks of any text it receives in
// a UTF8 database: valid UTF-8 and no NUL byte. PostgreSQL never sees an
// encrypted value, so the proxy must.
func checkEncoding(s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return newError(pgerrcode.CharacterNotInRepertoire, `invalid byte sequence for encoding "UTF8"`)
		}
	}
	if !utf8.ValidString(s) {
		return newError(pgerrcode.CharacterNotInRepertoire, `invalid byte sequence for encoding "UTF8"`)
	}
	return nil
}

func canonText(s string, _ *time.Location) (string, error) { return s, nil }

// Error is an invalid value: the SQLSTATE and message PostgreSQL would
// have raised for it, minus the value, which is plaintext and must not
// reach logs.
type Error struct {
	Code    string // SQLSTATE, e.g. pgerrcode.InvalidTextRepresentation
	Message string // e.g. "invalid input syntax for type integer"
}

func newError(code, msg string) *Error { return &Error{Code: code, Message: msg} }

// Error returns the message.
func (e *Error) Error() string { return e.Message }

// SQLState returns the SQLSTATE.
func (e *Error) SQLState() string { return e.Code }

// syntaxError is PostgreSQL's "invalid input syntax for type X" (22P02).
func syntaxError(pgName string) *Error {
	return newError(pgerrcode.InvalidTextRepresentation, "invalid input syntax for type "+pgName)
}

// isSpace is C isspace in the C locale, which PostgreSQL's input functions
// use to trim.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// trimSpace trims isSpace bytes from both ends.
func trimSpace(s string) string {
	for len(s) > 0 && isSpace(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isSpace(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
