package proxy

import (
	"fmt"
	"sync"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/pgcloak/pgcloak/coltype"
)

// typeSize is RowDescription's DataTypeSize for a declared type: pg_type's
// typlen, -1 for variable-length types.
func typeSize(typ string) int16 {
	switch typ {
	case "bool":
		return 1
	case "int2":
		return 2
	case "int4", "float4", "date":
		return 4
	case "int8", "float8", "timestamp", "timestamptz":
		return 8
	case "uuid":
		return 16
	}
	return -1
}

// typeMap is pgtype's registry of PostgreSQL types, used only to convert a
// declared column's canonical text into its binary wire form. pgtype.Map is
// not safe for concurrent use, so sessions share a pool of them.
var typeMaps = sync.Pool{New: func() any { return pgtype.NewMap() }}

// encodeBinary turns the canonical text form of a declared type into the
// binary format a client asked for, through pgtype's codecs: the text is
// decoded as PostgreSQL's text output and re-encoded in binary.
func encodeBinary(typ string, text []byte) ([]byte, error) {
	oid := coltype.OID(typ)
	m := typeMaps.Get().(*pgtype.Map)
	defer typeMaps.Put(m)
	t, ok := m.TypeForOID(oid)
	if !ok {
		return nil, &clientError{code: pgerrcode.FeatureNotSupported, msg: fmt.Sprintf("binary format for type %s is not supported", typ)}
	}
	v, err := t.Codec.DecodeValue(m, oid, pgtype.TextFormatCode, text)
	if err != nil {
		return nil, fmt.Errorf("decode %s text: %w", typ, err)
	}
	out, err := m.Encode(oid, pgtype.BinaryFormatCode, v, nil)
	if err != nil {
		return nil, fmt.Errorf("encode %s binary: %w", typ, err)
	}
	return out, nil
}
